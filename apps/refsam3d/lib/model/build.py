"""Presets and :func:`build_refsam3d` (the public constructor).

``vit_b``: the paper's model on SAM ViT-B (embed 768, 12 blocks, 12 heads, stages after blocks
3/6/9/12 = SAM's global-attention blocks 2/5/8/11, patch 16, 4 x2 upsamplings).
``small``: the same architecture scaled down to train from scratch on a few CPU cores: patch 8
(a 48^3 window -> 6^3 tokens, a ~36x52x38 hippocampus crop -> 5x7x5; 3 upsamplings, so stages
3/2/1 join the decoder at x2/x4/x8 as in vit_b), embed 128, 4 blocks (each block is one stage;
8-token windows, i.e. global attention up to 64^3 inputs, the last block always global), decoder
width 96, and the encoder trainable (no pre-trained weights to freeze). See ``docs/model.md``.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from .refsam3d import RefSAM3D
from .text_encoder import DEFAULT_TEXT_ENCODER, TextEncoder

_VIT_B: dict[str, Any] = dict(
    patch_size=16,
    input_scale=1.0,
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    use_rel_pos=True,
    window_size=8,  # 3D window in tokens (balanced to the grid); SAM's 2D window is 14
    global_attn_indexes=[2, 5, 8, 11],
    stage_indexes=[2, 5, 8, 11],
    pos_embed_size=64,  # SAM's 64 x 64 (h, w) table (1024 px / 16)
    depth_embed_size=8,  # learnable depth table (128 voxels / 16), resized for other depths
    rel_pos_window_size=14,  # SAM's window rel-pos tables (2*14-1), resized to the 3D window
    adapter_dim=64,
    drop_path_rate=0.0,  # stochastic depth over the encoder blocks (0 .. rate, linear); regularises training from scratch
    decoder_dim=256,  # SAM's prompt / transformer width
    decoder_channels=[128, 64, 32, 8],  # one per x2 upsampling: log2(16) = 4; 8 at full resolution (CPU cost)
    mask_dim=16,
    final_kernel=3,
    image_skip_channels=[],  # the paper: the image joins only the last conv (see PixelDecoder3D)
    transformer_depth=2,
    transformer_heads=8,
    transformer_mlp_dim=2048,
    cross_attn_heads=8,
    projector_hidden_dim=512,
    text_max_length=77,
    freeze_encoder=True,
)

_SMALL: dict[str, Any] = dict(
    _VIT_B,
    patch_size=8,  # 48^3 -> 6^3 tokens, a hippocampus crop (~36x52x38) -> 5x7x5; log2(8) = 3 upsamplings
    embed_dim=128,
    depth=4,
    num_heads=4,
    window_size=8,  # windows of 8 tokens: global for rois up to 64^3, bounded cost for larger ones
    global_attn_indexes=[3],  # the last block (stage 4) is always global
    stage_indexes=[0, 1, 2, 3],  # each block is one stage
    pos_embed_size=8,  # (h, w) table for 64 voxels / 8, resized for other sizes
    depth_embed_size=8,
    rel_pos_window_size=8,
    adapter_dim=32,
    decoder_dim=96,
    decoder_channels=[48, 24, 12],
    image_skip_channels=[8, 16],  # UNETR-style conv skips from the image at full and 1/2 resolution
    mask_dim=16,
    transformer_heads=4,
    transformer_mlp_dim=384,
    cross_attn_heads=4,
    projector_hidden_dim=192,
    freeze_encoder=False,  # trained from scratch
)

PRESETS: dict[str, dict[str, Any]] = {"vit_b": _VIT_B, "small": _SMALL}


def resolve_config(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Preset + overrides -> JSON-serialisable config (lists, not tuples). Unknown keys -> ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"unknown RefSAM3D preset {preset!r}; choose one of {sorted(PRESETS)}")
    base = copy.deepcopy(PRESETS[preset])
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"unknown RefSAM3D option(s) {unknown}; valid options: {sorted(base)}")
    for key, value in overrides.items():
        default = base[key]
        if isinstance(default, list):
            value = [int(v) for v in value]
        elif isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, float):
            value = float(value)
        elif isinstance(default, int):
            value = int(value)
        base[key] = value
    p = base["patch_size"]
    if p < 2 or p & (p - 1):
        raise ValueError(f"patch_size must be a power of 2 >= 2, got {p}")
    n_up = p.bit_length() - 1  # log2(patch_size) x2 upsamplings
    if len(base["decoder_channels"]) != n_up:
        if "decoder_channels" in overrides:
            raise ValueError(f"decoder_channels needs log2(patch_size)={n_up} entries, got {base['decoder_channels']}")
        base["decoder_channels"] = [max(8, base["decoder_dim"] // 2 ** (j + 1)) for j in range(n_up)]  # halve per level
    if base["input_scale"] <= 0:
        raise ValueError("input_scale must be > 0")
    if base["embed_dim"] % base["num_heads"] or base["decoder_dim"] % 2:
        raise ValueError("embed_dim must be divisible by num_heads and decoder_dim must be even")
    if len(base["stage_indexes"]) < 1 or max(base["stage_indexes"]) >= base["depth"]:
        raise ValueError(f"stage_indexes {base['stage_indexes']} must be block indexes < depth={base['depth']}")
    return {"preset": preset, **base}


def build_refsam3d(
    preset: str = "vit_b",
    sam_checkpoint: Optional[Union[str, Path]] = None,
    text_encoder: Optional[Union[str, Path, TextEncoder]] = None,
    **overrides: Any,
) -> RefSAM3D:
    """Build RefSAM3D.

    Args:
        preset: ``"vit_b"`` (paper model, SAM ViT-B) or ``"small"`` (CPU-trainable, from scratch).
        sam_checkpoint: official ``sam_vit_b_01ec64.pth`` (vit_b only); validated and mapped.
        text_encoder: HF hub name, local folder, or a built :class:`TextEncoder` to share; None ->
            ``openai/clip-vit-base-patch16`` (needs the HF cache or internet).
        **overrides: any key of ``PRESETS[preset]`` (e.g. ``patch_size``, ``input_scale``, ``window_size``).
    """
    config = resolve_config(preset, overrides)
    if isinstance(text_encoder, TextEncoder):
        text = text_encoder
    else:
        text = TextEncoder(str(text_encoder) if text_encoder is not None else DEFAULT_TEXT_ENCODER, max_length=config["text_max_length"])
    config["text_encoder"] = text.name_or_path
    model = RefSAM3D(config, text)
    if sam_checkpoint is not None:
        from .sam_checkpoint import load_sam_checkpoint

        load_sam_checkpoint(model, sam_checkpoint)
    elif config["freeze_encoder"]:
        warnings.warn(
            f"RefSAM3D {preset!r} built without SAM weights (sam_checkpoint=None): its frozen image encoder is random. "
            "Pass sam_checkpoint='sam_vit_b_01ec64.pth' for the paper's model.",
            stacklevel=2,
        )
    return model
