"""RefSAM3D network (plain PyTorch; imports nothing from monailabel). See ``docs/model.md``.

File -> paper map: ``image_encoder.py`` (Sec. III-B, Fig. 1(B)/(C)), ``adapter.py`` (Eq. 1),
``text_encoder.py`` (Fig. 1(D), Eq. 2-3), ``cross_attention.py`` (Fig. 2, Eq. 6-8; Eq. 4-5 are the
stage outputs of the encoder), ``transformer.py`` + ``mask_decoder.py`` (Sec. III-D),
``refsam3d.py`` (Fig. 1(A)), ``build.py`` (presets), ``sam_checkpoint.py`` (SAM weights),
``checkpoint.py`` (our trained weights).
"""

from .build import PRESETS, build_refsam3d, resolve_config
from .checkpoint import (CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint,
                         update_checkpoint_extra)
from .refsam3d import ImageEncoding, PromptEmbedding, RefSAM3D
from .sam_checkpoint import SamCheckpointError, load_sam_checkpoint, read_sam_state_dict
from .text_encoder import DEFAULT_TEXT_ENCODER, TextEncoder, TextFeatures

__all__ = [
    "PRESETS", "build_refsam3d", "resolve_config", "RefSAM3D", "ImageEncoding", "PromptEmbedding",
    "TextEncoder", "TextFeatures", "DEFAULT_TEXT_ENCODER", "save_checkpoint", "load_checkpoint", "read_checkpoint",
    "update_checkpoint_extra",
    "CheckpointError", "load_sam_checkpoint", "read_sam_state_dict", "SamCheckpointError",
]
