"""Official SAM checkpoint -> RefSAM3D (vit_b): validation and key mapping.

Reads ``sam_vit_b_01ec64.pth`` unchanged (keys ``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``) and maps what RefSAM3D reuses:

* ``image_encoder.patch_embed.proj.weight`` ``[768, 3, 16, 16]`` -> ``[768, 1, 1, 16, 16]``: the RGB
  input channels are summed (a grayscale volume fed to SAM is the gray value replicated to R, G and
  B, so ``sum_c W_c`` is exactly SAM's response), then used as the frozen ``1 x 16 x 16`` 3D conv
  (bilinearly resized and rescaled by ``(16/p)^2`` when ``patch_size != 16``).
* ``image_encoder.pos_embed`` and every ``image_encoder.blocks.*`` tensor: unchanged (same names).
* ``mask_decoder.transformer.*``: unchanged; ``mask_decoder.mask_tokens.weight`` ``[4, 256]`` -> row 0
  (SAM's single-mask token) ``[1, 256]``.

Everything else of the checkpoint is 2D-only and unused (:data:`UNUSED_PATTERNS`); every RefSAM3D
tensor not mapped is new in 3D (:data:`NEW_PATTERNS`). Both sets are asserted exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F

SAM_VARIANTS = {(768, 12): "ViT-B", (1024, 24): "ViT-L", (1280, 32): "ViT-H"}
UNUSED_PATTERNS = (
    r"image_encoder\.neck\..*",  # 2D neck: RefSAM3D has one 3D neck per stage, trained from scratch
    r"prompt_encoder\..*",  # point/box/mask prompt encoder: replaced by text prompts
    r"mask_decoder\.iou_token\.weight",
    r"mask_decoder\.iou_prediction_head\..*",
    r"mask_decoder\.output_upscaling\..*",  # 2D transposed convs
    r"mask_decoder\.output_hypernetworks_mlps\..*",  # 4 hypernetworks for 2D mask features
)
NEW_PATTERNS = (
    r"image_encoder\.patch_embed\.depth_conv\.(weight|bias)",
    r"image_encoder\.pos_embed_depth",
    r"image_encoder\.blocks\.\d+\.attn\.rel_pos_d",
    r"image_encoder\.blocks\.\d+\.adapter\..*",
    r"image_encoder\.necks\..*",
    r"text_projector\..*",
    r"cross_attention\..*",
    r"pixel_decoder\..*",
    r"mask_decoder\.pe_layer\.positional_encoding_gaussian_matrix",
    r"mask_decoder\.output_hypernetworks_mlp\..*",
    r"mask_decoder\.coarse_mlp\..*",
    r"prompt_encoder\..*",  # our 3D click / no-text / previous-mask encoder (SAM's 2D one is not reused)
    r"click_refinement\..*",  # local full-resolution click edits (model/click_refinement.py)
)
REQUIRED_ARCH = dict(embed_dim=768, depth=12, num_heads=12, pos_embed_size=64, rel_pos_window_size=14,
                     global_attn_indexes=[2, 5, 8, 11], decoder_dim=256, transformer_depth=2,
                     transformer_heads=8, transformer_mlp_dim=2048, use_rel_pos=True)


class SamCheckpointError(ValueError):
    """The file is not a usable SAM ViT-B checkpoint (missing, truncated, other variant, ...)."""


@dataclass
class SamLoadReport:
    reused: dict[str, str]  # RefSAM3D key -> SAM key
    missing: set[str]  # RefSAM3D keys not in SAM (new in 3D)
    unused: set[str]  # SAM keys not used (2D-only)


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


def reference_sam_vit_b_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ViT-B state dict (built on the meta device: no memory, no download)."""
    from segment_anything import build_sam_vit_b

    with torch.device("meta"):
        sam = build_sam_vit_b()
    return {k: tuple(v.shape) for k, v in sam.state_dict().items()}


def read_sam_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Load and validate a SAM ViT-B state dict; :class:`SamCheckpointError` naming the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SamCheckpointError(f"SAM checkpoint {str(path)!r} does not exist (expected the official sam_vit_b_01ec64.pth)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise SamCheckpointError(
            f"{str(path)!r} ({path.stat().st_size} bytes) is not a readable PyTorch checkpoint - truncated download or "
            f"wrong file? The official sam_vit_b_01ec64.pth is 375042383 bytes. ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    if isinstance(sd, dict) and "image_encoder.patch_embed.proj.weight" not in sd:
        for wrapper in ("model", "state_dict"):
            if isinstance(sd.get(wrapper), dict):
                sd = sd[wrapper]
                break
    if not isinstance(sd, dict) or "image_encoder.patch_embed.proj.weight" not in sd:
        keys = list(sd)[:5] if isinstance(sd, dict) else type(sd).__name__
        hint = " (this looks like a RefSAM3D checkpoint: load it with load_checkpoint)" if isinstance(sd, dict) and "format" in sd else ""
        raise SamCheckpointError(f"{str(path)!r} is not a SAM checkpoint: no 'image_encoder.*' weights (found {keys}){hint}")
    embed = int(sd["image_encoder.patch_embed.proj.weight"].shape[0])
    blocks = len({k.split(".")[2] for k in sd if k.startswith("image_encoder.blocks.")})
    variant = SAM_VARIANTS.get((embed, blocks), f"unknown (embed {embed}, {blocks} blocks)")
    if variant != "ViT-B":
        raise SamCheckpointError(
            f"{str(path)!r} is a SAM {variant} checkpoint (embed dim {embed}, {blocks} blocks); "
            "RefSAM3D vit_b needs the SAM ViT-B checkpoint sam_vit_b_01ec64.pth"
        )
    ref = reference_sam_vit_b_shapes()
    missing = sorted(set(ref) - set(sd))
    if missing:
        raise SamCheckpointError(f"{str(path)!r} is an incomplete SAM ViT-B checkpoint: {len(missing)} tensors missing, e.g. {missing[:5]}")
    extra = sorted(set(sd) - set(ref))
    if extra:
        raise SamCheckpointError(f"{str(path)!r} has tensors the SAM ViT-B checkpoint does not have, e.g. {extra[:5]}")
    bad = [f"{k}: {tuple(sd[k].shape)} != {ref[k]}" for k in ref if tuple(sd[k].shape) != ref[k]]
    if bad:
        raise SamCheckpointError(f"{str(path)!r} has tensors of the wrong shape for SAM ViT-B: {bad[:5]}")
    return sd


def fold_patch_embedding(weight: torch.Tensor, patch_size: int) -> torch.Tensor:
    """SAM's ``[C, 3, 16, 16]`` patch kernel -> ``[C, 1, 1, p, p]`` for 1-channel volumes."""
    w = weight.float().sum(dim=1, keepdim=True)  # [C, 1, 16, 16]: gray replicated to RGB
    if patch_size != w.shape[-1]:
        scale = (w.shape[-1] / patch_size) ** 2  # keep the response to a constant patch
        w = F.interpolate(w, size=(patch_size, patch_size), mode="bilinear", align_corners=False, antialias=True) * scale
    return w[:, :, None].to(weight.dtype)  # [C, 1, 1, p, p]


def map_sam_state_dict(sd: dict[str, torch.Tensor], patch_size: int = 16) -> tuple[dict[str, torch.Tensor], dict[str, str], set[str]]:
    """SAM keys -> (RefSAM3D state entries, RefSAM3D key -> SAM key, unused SAM keys)."""
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unused: set[str] = set()
    for key, value in sd.items():
        if key == "image_encoder.patch_embed.proj.weight":
            mapped[key] = fold_patch_embedding(value, patch_size)
        elif key == "mask_decoder.mask_tokens.weight":
            mapped[key] = value[:1].clone()  # single-mask output token
        elif _matches(key, UNUSED_PATTERNS):
            unused.add(key)
            continue
        elif key.startswith("image_encoder.") or key.startswith("mask_decoder.transformer."):
            mapped[key] = value
        else:
            raise SamCheckpointError(f"unexpected SAM key {key!r}: neither mapped nor known as 2D-only")
        source[key] = key
    return mapped, source, unused


def load_sam_checkpoint(model: torch.nn.Module, path: Union[str, Path]) -> SamLoadReport:
    """Validate ``path`` and copy SAM's weights into ``model`` (a RefSAM3D); asserts the exact key sets."""
    cfg = model.config  # type: ignore[attr-defined]
    wrong = {k: cfg[k] for k, v in REQUIRED_ARCH.items() if cfg[k] != v}
    if wrong:
        raise SamCheckpointError(
            f"SAM ViT-B weights need the vit_b architecture, but this model has {wrong} (preset {cfg['preset']!r}); "
            f"build preset 'vit_b' without these overrides, or sam_checkpoint=None"
        )
    sd = read_sam_state_dict(path)
    mapped, source, unused = map_sam_state_dict(sd, cfg["patch_size"])
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("text_encoder.")}
    not_in_model = sorted(set(mapped) - set(own))
    assert not not_in_model, f"SAM tensors with no RefSAM3D counterpart: {not_in_model[:5]}"
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise SamCheckpointError(f"SAM tensor {k} has shape {tuple(v.shape)}, RefSAM3D expects {tuple(own[k].shape)}")
    missing = set(own) - set(mapped)
    unexpected_new = sorted(k for k in missing if not _matches(k, NEW_PATTERNS))
    assert not unexpected_new, f"RefSAM3D tensors neither from SAM nor known as new: {unexpected_new[:5]}"
    expected_new = {k for k in own if _matches(k, NEW_PATTERNS)}
    assert missing == expected_new, f"new-key set mismatch: {sorted(missing ^ expected_new)[:5]}"
    expected_unused = {k for k in sd if _matches(k, UNUSED_PATTERNS)}
    assert unused == expected_unused, f"unused-key set mismatch: {sorted(unused ^ expected_unused)[:5]}"
    with torch.no_grad():
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        for k, v in mapped.items():
            target = params.get(k, buffers.get(k))
            target.copy_(v.to(dtype=target.dtype, device=target.device))
    model.sam_initialised = True  # type: ignore[attr-defined]
    return SamLoadReport(reused=source, missing=missing, unused=unused)
