from .refsam3d import RefSAM3DTrain, defaults_from_conf

__all__ = ["RefSAM3DTrain", "defaults_from_conf"]
