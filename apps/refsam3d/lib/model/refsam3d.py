"""The assembled RefSAM3D network (Fig. 1(A)).

``image [B, 1, D, H, W]`` -> scale/pad -> :class:`ImageEncoderViT3D` (4 stage features ``V'_i``) ->
:class:`PixelDecoder3D` (prompt-independent mask features) = :class:`ImageEncoding`, computed once.
``prompts`` -> :class:`TextEncoder` (frozen, Eq. 2) -> :class:`CrossModalProjector` (Eq. 3) ->
:class:`HierarchicalCrossAttention` with the stage features (Eq. 6-8) -> :class:`MaskDecoder3D`
-> logits ``[B, K, D, H, W]``, cropped / resized back to the caller's grid.
Clicks (``points`` / ``point_labels``) and the previous mask go through :class:`PointPromptEncoder3D`:
point tokens join the sparse tokens, the mask joins the dense prompt; a prompt may be ``None`` (clicks only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .click_refinement import ClickRefinement3D
from .cross_attention import HierarchicalCrossAttention
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D, PixelDecoder3D
from .prompt_encoder import PointPromptEncoder3D, normalise_points
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


PromptInput = Union[Sequence[Optional[str]], PromptEmbedding, None]


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
        self.prompt_encoder = PointPromptEncoder3D(c["decoder_dim"], c["patch_size"], self.mask_decoder.pe_layer)
        self.click_refinement = ClickRefinement3D(c["decoder_dim"], c["mask_dim"])
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

    def embed_prompts(self, prompts: PromptInput, k: Optional[int] = None) -> PromptEmbedding:
        """K prompts (strings, or ``None`` = no text: the learned ``no_text_embed`` stands in for the sentence
        and the words, one token) -> :class:`PromptEmbedding`; ``prompts=None`` means ``k`` text-less prompts."""
        if isinstance(prompts, PromptEmbedding):
            return prompts
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings (or None entries for clicks only), e.g. ['liver']")
        entries = [None] * int(k or 0) if prompts is None else list(prompts)
        if not entries:
            raise ValueError("no prompt: give K >= 1 text prompts, or clicks (points) with prompts=None")
        texts = [p for p in entries if p is not None]
        if len(texts) == len(entries):
            return self.encode_text(entries)  # text only: today's path
        no_text = self.prompt_encoder.no_text_embed.weight  # [1, C]
        txt = self.encode_text(texts) if texts else None
        length = txt.tokens.shape[1] if txt is not None else 1
        empty = torch.zeros(length - 1, no_text.shape[1], dtype=no_text.dtype, device=no_text.device)
        off = torch.zeros(length - 1, dtype=torch.bool, device=no_text.device)
        tokens, masks, sentences, j = [], [], [], 0
        for p in entries:
            if p is None:
                tokens.append(torch.cat([no_text, empty]))
                masks.append(torch.cat([off.new_ones(1), off]))
                sentences.append(no_text[0])
            else:
                tokens.append(txt.tokens[j].to(no_text.dtype))
                masks.append(txt.mask[j])
                sentences.append(txt.sentence[j].to(no_text.dtype))
                j += 1
        return PromptEmbedding(torch.stack(tokens), torch.stack(masks), torch.stack(sentences))

    def decode(self, enc: ImageEncoding, prompts: PromptInput, points: Optional[torch.Tensor] = None,
               point_labels: Optional[torch.Tensor] = None, previous_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-prompt part: logits ``[B, K, D, H, W]`` at the caller's resolution; never re-runs the encoder.

        ``prompts``: K strings / ``None`` entries (clicks only), a :class:`PromptEmbedding`, or ``None``
        (K from the clicks). ``points [B, K, P, 3]``: voxel coordinates (D, H, W) in the caller's grid
        (``enc.input_shape``); ``point_labels [B, K, P]``: 1 positive, 0 negative, -1 padding;
        ``previous_mask [B, K, D, H, W]``: logits of the last answer at the caller's grid. With neither,
        exactly today's text-only output.
        """
        k = None
        if prompts is None:
            k = int(points.shape[1]) if points is not None else int(previous_mask.shape[1]) if previous_mask is not None else 0
        txt = self.embed_prompts(prompts, k)
        dense = self.cross_attention(enc.stages, txt.tokens, txt.mask)  # [B*K, C, d, h, w]
        sparse = torch.cat([txt.sentence[:, None], txt.tokens], dim=1)  # [K, 1+L, C]
        sparse_mask = torch.cat([torch.ones_like(txt.mask[:, :1]), txt.mask], dim=1)  # [K, 1+L]
        if previous_mask is not None:
            dense = dense + self._mask_prompt(enc, previous_mask, txt.tokens.shape[0]).to(dense.dtype)
        if points is None or points.shape[-2] == 0:
            logits = self.mask_decoder(enc.stages[-1], dense, sparse, sparse_mask, enc.mask_features)  # [B, K, Dp, Hp, Wp]
            return self._restore(logits, enc)
        sparse, sparse_mask, positions = self._append_points(enc, sparse, sparse_mask, points, point_labels)  # [B*K, T, C]
        logits, tokens = self.mask_decoder(enc.stages[-1], dense, sparse, sparse_mask, enc.mask_features,
                                           return_tokens=True)  # [B, K, Dp, Hp, Wp], [B*K, T, C]
        p = points.shape[-2]  # the click tokens are the last P
        logits = self.click_refinement(logits, enc.mask_features, tokens[:, -p:], positions, sparse_mask[:, -p:])
        return self._restore(logits, enc)

    def _append_points(self, enc: ImageEncoding, sparse: torch.Tensor, sparse_mask: torch.Tensor, points: torch.Tensor,
                       point_labels: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Point tokens per (image, prompt) after the text tokens: ``[B*K, T + P, C]``, its mask, and the
        clicks' positions on the mask features' grid ``[B*K, P, 3]`` (continuous, voxel j spans [j, j+1))."""
        b, (k, t, c) = enc.batch_size, sparse.shape
        if points.ndim != 4 or tuple(points.shape[:2]) != (b, k) or points.shape[-1] != 3:
            raise ValueError(f"points must be [B={b}, K={k}, P, 3] voxel coordinates (D, H, W), got {tuple(points.shape)}")
        if point_labels is None or tuple(point_labels.shape) != tuple(points.shape[:3]):
            got = None if point_labels is None else tuple(point_labels.shape)
            raise ValueError(f"point_labels must be [B, K, P] = {tuple(points.shape[:3])} (1 / 0 / -1), got {got}")
        if bool(((point_labels < -1) | (point_labels > 1)).any()):
            raise ValueError("point_labels must be 1 (positive), 0 (negative) or -1 (padding)")
        p = points.shape[2]
        dev = sparse.device
        norm = normalise_points(points.to(dev), enc.input_shape, enc.scaled_shape, enc.mask_features.shape[2:])
        tokens, valid = self.prompt_encoder.embed_points(norm.reshape(b * k, p, 3), point_labels.to(dev).reshape(b * k, p).long())
        shared = sparse[None].expand(b, k, t, c).reshape(b * k, t, c)
        shared_mask = sparse_mask[None].expand(b, k, t).reshape(b * k, t)
        padded = torch.tensor(enc.mask_features.shape[2:], dtype=norm.dtype, device=norm.device)
        positions = (norm * padded).reshape(b * k, p, 3)  # fractions of the padded grid -> its voxel units
        return torch.cat([shared, tokens.to(sparse.dtype)], dim=1), torch.cat([shared_mask, valid], dim=1), positions

    def _mask_prompt(self, enc: ImageEncoding, previous_mask: torch.Tensor, k: int) -> torch.Tensor:
        """Previous logits ``[B, K, D, H, W]`` (caller's grid) -> dense ``[B*K, C, d, h, w]`` (scaled, zero-padded)."""
        b = enc.batch_size
        if previous_mask.ndim != 5 or tuple(previous_mask.shape) != (b, k, *enc.input_shape):
            raise ValueError(f"previous_mask must be [B={b}, K={k}, {', '.join(map(str, enc.input_shape))}] logits, "
                             f"got {tuple(previous_mask.shape)}")
        dev = enc.mask_features.device
        x, _, _ = self._prepare(previous_mask.to(dev).float().reshape(b * k, 1, *enc.input_shape))
        return self.prompt_encoder.embed_mask(x)

    def forward(self, image: torch.Tensor, prompts: PromptInput, points: Optional[torch.Tensor] = None,
                point_labels: Optional[torch.Tensor] = None, previous_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``image [B, 1, D, H, W]``, K prompts (+ clicks, previous mask; see :meth:`decode`) -> logits ``[B, K, D, H, W]``."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, e.g. ['liver']")
        return self.decode(self.encode_image(image), prompts, points, point_labels, previous_mask)

    def extra_repr(self) -> str:
        return f"preset={self.config.get('preset')!r}, text_encoder={self.config.get('text_encoder')!r}"
