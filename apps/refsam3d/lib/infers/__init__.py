from .refsam3d import RefSAM3DInfer, RestoreGeometryd

__all__ = ["RefSAM3DInfer", "RestoreGeometryd"]
