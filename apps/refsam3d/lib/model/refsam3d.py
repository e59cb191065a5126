"""The assembled RefSAM3D network (Fig. 1(A)).

``image [B, 1, D, H, W]`` -> scale/pad -> :class:`ImageEncoderViT3D` (4 stage features ``V'_i``) ->
:class:`PixelDecoder3D` (prompt-independent mask features) = :class:`ImageEncoding`, computed once.
``prompts`` -> :class:`TextEncoder` (frozen, Eq. 2) -> :class:`CrossModalProjector` (Eq. 3) ->
:class:`HierarchicalCrossAttention` with the stage features (Eq. 6-8) -> :class:`MaskDecoder3D`
-> logits ``[B, K, D, H, W]``, cropped / resized back to the caller's grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cross_attention import HierarchicalCrossAttention
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D, PixelDecoder3D
from .text_encoder import CrossModalProjector, TextEncoder, TextFeatures

# image-encoder parameters that are new in 3D (trainable even when SAM's encoder is frozen)
NEW_ENCODER_PARAMS = ("patch_embed.depth_conv.", "pos_embed_depth", "attn.rel_pos_d", ".adapter.", "necks.")


def is_new_encoder_param(name: str) -> bool:
    """True for image-encoder parameters (names relative to ``image_encoder``) that SAM does not have."""
    return any(tag in name or name.startswith(tag) for tag in NEW_ENCODER_PARAMS)


@dataclass
class ImageEncoding:
    """Prompt-independent encoding of a batch of images; decode it with :meth:`RefSAM3D.decode`.

    ``stages``: N x ``[B, C, d, h, w]`` stage features (token grid); ``mask_features``:
    ``[B, Cm, Dp, Hp, Wp]`` at the scaled + padded resolution; ``input_shape`` the caller's
    ``(D, H, W)``; ``scaled_shape`` the size after ``input_scale`` and before padding.
    """

    stages: list[torch.Tensor]
    mask_features: torch.Tensor
    input_shape: tuple[int, int, int]
    scaled_shape: tuple[int, int, int]

    def to(self, device: Union[str, torch.device]) -> "ImageEncoding":
        return ImageEncoding([s.to(device) for s in self.stages], self.mask_features.to(device), self.input_shape, self.scaled_shape)

    @property
    def batch_size(self) -> int:
        return int(self.mask_features.shape[0])


@dataclass
class PromptEmbedding:
    """Projected text (Eq. 3): word tokens ``[K, L, C]``, mask ``[K, L]`` (True = token), sentence ``[K, C]``."""

    tokens: torch.Tensor
    mask: torch.Tensor
    sentence: torch.Tensor


class RefSAM3D(nn.Module):
    """RefSAM3D; build it with :func:`lib.model.build_refsam3d`."""

    def __init__(self, config: dict[str, Any], text_encoder: TextEncoder) -> None:
        super().__init__()
        c = config
        self.config: dict[str, Any] = dict(config)
        self.sam_initialised = False  # set by the SAM checkpoint loader
        n_stages = len(c["stage_indexes"])
        self.image_encoder = ImageEncoderViT3D(
            patch_size=c["patch_size"], in_chans=1, embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
            mlp_ratio=c["mlp_ratio"], out_chans=c["decoder_dim"], use_rel_pos=c["use_rel_pos"], window_size=c["window_size"],
            global_attn_indexes=tuple(c["global_attn_indexes"]), stage_indexes=tuple(c["stage_indexes"]),
            pos_embed_size=c["pos_embed_size"], depth_embed_size=c["depth_embed_size"],
            rel_pos_window_size=c["rel_pos_window_size"], adapter_dim=c["adapter_dim"],
            drop_path_rate=c["drop_path_rate"],
        )
        self.text_encoder = text_encoder
        self.text_projector = CrossModalProjector(text_encoder.hidden_size, c["decoder_dim"], c["projector_hidden_dim"])
        self.cross_attention = HierarchicalCrossAttention(c["decoder_dim"], n_stages, c["cross_attn_heads"])
        self.pixel_decoder = PixelDecoder3D(c["decoder_dim"], c["patch_size"], c["decoder_channels"], c["mask_dim"],
                                            n_stages, in_chans=1, final_kernel=c["final_kernel"],
                                            image_skip_channels=c["image_skip_channels"])
        self.mask_decoder = MaskDecoder3D(c["decoder_dim"], c["mask_dim"], c["transformer_depth"], c["transformer_heads"],
                                          c["transformer_mlp_dim"])
        self.apply_freezing()

    # ------------------------------------------------------------------ parameters
    def apply_freezing(self) -> None:
        """Text encoder always frozen; SAM's encoder weights frozen if ``freeze_encoder``; rest trainable."""
        for p in self.parameters():
            p.requires_grad_(True)
        for p in self.text_encoder.parameters():
            p.requires_grad_(False)
        if self.config["freeze_encoder"]:
            for name, p in self.image_encoder.named_parameters():
                p.requires_grad_(is_new_encoder_param(name))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def frozen_state_keys(self) -> set[str]:
        """State-dict keys of frozen parameters (text encoder included)."""
        return {n for n, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad} | {
            k for k in self.state_dict() if k.startswith("text_encoder.")}

    def parameter_report(self) -> dict[str, Any]:
        """Parameter counts: ``total``, ``trainable``, ``share`` (= trainable / total), plus per component."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        parts = {name: {"total": sum(p.numel() for p in m.parameters()),
                        "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad)}
                 for name, m in self.named_children()}
        no_text = total - parts["text_encoder"]["total"]
        return {"total": total, "trainable": trainable, "share": trainable / max(total, 1),
                "total_without_text_encoder": no_text, "share_without_text_encoder": trainable / max(no_text, 1),
                "components": parts}

    # ------------------------------------------------------------------ geometry
    @property
    def patch_size(self) -> int:
        return int(self.config["patch_size"])

    @property
    def size_divisor(self) -> int:
        """Smallest input size multiple that needs no padding (``forward`` pads and crops any size itself)."""
        p, s = self.patch_size, float(self.config["input_scale"])
        for m in range(1, 64 * p + 1):
            if abs(m * s / p - round(m * s / p)) < 1e-6 and round(m * s / p) >= 1:
                return m
        return p

    def _prepare(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int], tuple[int, int, int]]:
        if not isinstance(image, torch.Tensor) or image.ndim != 5 or image.shape[1] != 1:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a float tensor [B, 1, D, H, W] (one channel, normalised intensities), got {shape}")
        if not image.is_floating_point():
            image = image.float()
        in_shape = tuple(int(n) for n in image.shape[2:])
        s = float(self.config["input_scale"])
        scaled = in_shape if s == 1.0 else tuple(max(1, int(round(n * s))) for n in in_shape)
        x = image if s == 1.0 else F.interpolate(image, size=scaled, mode="trilinear", align_corners=False)
        p = self.patch_size
        pad = [(-n) % p for n in scaled]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))  # zeros after the end of each axis
        return x, in_shape, scaled  # type: ignore[return-value]

    def _restore(self, logits: torch.Tensor, enc: ImageEncoding) -> torch.Tensor:
        d, h, w = enc.scaled_shape
        logits = logits[..., :d, :h, :w]
        if enc.scaled_shape != enc.input_shape:
            b, k = logits.shape[:2]
            logits = F.interpolate(logits.reshape(b * k, 1, d, h, w).float(), size=enc.input_shape, mode="trilinear",
                                   align_corners=False).view(b, k, *enc.input_shape)
        return logits.contiguous()

    # ------------------------------------------------------------------ forward passes
    def encode_image(self, image: torch.Tensor) -> ImageEncoding:
        """Prompt-independent part: ``[B, 1, D, H, W]`` -> :class:`ImageEncoding` (reuse it for any prompts)."""
        x, in_shape, scaled = self._prepare(image)  # [B, 1, Dp, Hp, Wp]
        stages = self.image_encoder(x)  # N x [B, C, Dp/p, Hp/p, Wp/p]
        mask_features = self.pixel_decoder(stages, x)  # [B, Cm, Dp, Hp, Wp]
        return ImageEncoding(stages, mask_features, in_shape, scaled)

    def encode_text(self, prompts: Sequence[str]) -> PromptEmbedding:
        """Frozen text encoder (cached per prompt) + trainable projector: K prompts -> :class:`PromptEmbedding`."""
        feats: TextFeatures = self.text_encoder(list(prompts))
        dev = next(self.text_projector.parameters()).device
        tokens = self.text_projector(feats.tokens.to(dev))  # [K, L, Ce] -> [K, L, C]
        tokens = tokens * feats.mask.to(dev)[..., None].to(tokens.dtype)  # padding stays exactly zero
        sentence = self.text_projector(feats.sentence.to(dev))  # [K, Ce] -> [K, C]
        return PromptEmbedding(tokens, feats.mask.to(dev), sentence)

    def decode(self, enc: ImageEncoding, prompts: Union[Sequence[str], PromptEmbedding]) -> torch.Tensor:
        """Per-prompt part: logits ``[B, K, D, H, W]`` at the caller's resolution; never re-runs the encoder."""
        txt = prompts if isinstance(prompts, PromptEmbedding) else self.encode_text(prompts)
        dense = self.cross_attention(enc.stages, txt.tokens, txt.mask)  # [B*K, C, d, h, w]
        sparse = torch.cat([txt.sentence[:, None], txt.tokens], dim=1)  # [K, 1+L, C]
        sparse_mask = torch.cat([torch.ones_like(txt.mask[:, :1]), txt.mask], dim=1)  # [K, 1+L]
        logits = self.mask_decoder(enc.stages[-1], dense, sparse, sparse_mask, enc.mask_features)  # [B, K, Dp, Hp, Wp]
        return self._restore(logits, enc)

    def forward(self, image: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``image [B, 1, D, H, W]``, K prompts -> mask logits ``[B, K, D, H, W]``."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, e.g. ['liver']")
        return self.decode(self.encode_image(image), prompts)

    def extra_repr(self) -> str:
        return f"preset={self.config.get('preset')!r}, text_encoder={self.config.get('text_encoder')!r}"
