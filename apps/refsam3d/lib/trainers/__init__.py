from .refsam3d import RefSAM3DTrain

__all__ = ["RefSAM3DTrain"]
