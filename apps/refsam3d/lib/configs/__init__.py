from .refsam3d import RefSAM3DConfig

__all__ = ["RefSAM3DConfig"]
