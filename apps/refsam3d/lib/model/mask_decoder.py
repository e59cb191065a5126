"""Lightweight 3D mask decoder (Sec. III-D): SAM's mask decoder in 3D with progressive upsampling
to full resolution, U-shaped multi-layer aggregation (MLAM) of stage 1-4 features and a last 3D
conv over ``[mask features, input image]``.

Split for fast multi-prompt decoding:

* ``PixelDecoder3D`` (prompt-independent, once per image): ``log2(patch)`` x2 transposed 3D convs from
  the stage-4 embedding, injecting stage 3/2/1 features at successive levels (U-shape), then the
  last conv over ``[features, image]`` -> mask features ``M [B, Cm, D, H, W]``.
* ``MaskDecoder3D`` (per prompt, at the token grid): SAM's two-way transformer between the stage-4
  embedding + dense cross-modal prompt and the sparse tokens ``[mask token, sentence, words]``; a
  hypernetwork MLP turns the mask token into ``Cm`` weights, ``logits = <w, M> + b`` plus a coarse
  token-grid term (mask token . transformer image tokens) upsampled trilinearly.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetResBlock

from .common import MLP, LayerNorm3d, PatchConvTranspose3d, upsample_trilinear
from .transformer import TwoWayTransformer


class PositionEmbeddingRandom3D(nn.Module):
    """SAM's random Fourier positional encoding, for a 3D grid: ``[C, d, h, w]`` with ``C = 2 * num_pos_feats``."""

    def __init__(self, num_pos_feats: int = 128, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(3, num_pos_feats, generator=g))

    def forward(self, size: Sequence[int]) -> torch.Tensor:
        gm = self.positional_encoding_gaussian_matrix.float()
        with torch.autocast(device_type=gm.device.type, enabled=False):  # phases in fp32, also under autocast
            axes = [(torch.arange(n, device=gm.device, dtype=torch.float32) + 0.5) / n for n in size]
            coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [d, h, w, 3] in (0, 1)
            coords = 2 * math.pi * ((2 * coords - 1) @ gm)  # [d, h, w, F]
            return torch.cat([coords.sin(), coords.cos()], dim=-1).permute(3, 0, 1, 2)  # [C, d, h, w]


class PixelDecoder3D(nn.Module):
    """Prompt-independent U-shaped upsampling path: stage features (token grid) + image -> ``M``."""

    def __init__(self, dim: int, patch_size: int, channels: Sequence[int], mask_dim: int, num_stages: int = 4,
                 in_chans: int = 1, final_kernel: int = 3, image_skip_channels: Sequence[int] = ()) -> None:
        super().__init__()
        n_up = int(round(math.log2(patch_size)))
        if 2**n_up != patch_size:
            raise ValueError(f"patch_size must be a power of 2 (log2(patch) x2 upsamplings), got {patch_size}")
        if len(channels) != n_up:
            raise ValueError(f"decoder_channels needs log2(patch_size)={n_up} entries, got {list(channels)}")
        self.n_up = n_up
        # stage (0-based) injected at level j: the last stage is the base, then stage N-2 at level 1, ...
        self.level_stage = {j: num_stages - 1 - j for j in range(1, n_up + 1) if num_stages - 1 - j >= 0}
        self.base_stages = [s for s in range(num_stages - 1) if s not in self.level_stage.values()]  # merged at the base
        self.base = nn.Sequential(nn.Conv3d(dim * (1 + len(self.base_stages)), dim, 1, bias=False), LayerNorm3d(dim), nn.GELU())
        chans = [dim, *channels]
        self.ups = nn.ModuleList(PatchConvTranspose3d(chans[j - 1], chans[j], 2) for j in range(1, n_up + 1))
        self.skips = nn.ModuleDict({
            str(j): nn.Sequential(nn.Conv3d(dim, chans[j], 1), PatchConvTranspose3d(chans[j], chans[j], 2**j))
            for j in self.level_stage
        })
        # LayerNorm + GELU below full resolution; the full-resolution features go straight (linearly) into
        # the final conv, whose GELU is the nonlinearity there (each full-resolution pass costs ~0.1 s at 160^3)
        self.norms = nn.ModuleList(LayerNorm3d(chans[j]) for j in range(1, n_up))
        # a 3x3x3 conv on the coarse levels only (all but the two finest): at 1/2 or full resolution each such
        # conv would cost about a third of the ViT-B encoder on CPU; full resolution gets the final conv
        self.convs = nn.ModuleList(nn.Conv3d(chans[j], chans[j], 3, padding=1) for j in range(1, n_up - 1))
        self.act = nn.GELU()
        self.final = nn.Conv3d(chans[-1] + in_chans, mask_dim, final_kernel, padding=final_kernel // 2)
        # optional UNETR-style conv skips from the image (empty = the paper: the image joins only the last conv):
        # stem[r] works at 1/2^r resolution and is fused (concat + residual conv block) into decoder level n_up - r
        skip = list(image_skip_channels)[:n_up]
        self.image_stem = nn.ModuleList(
            UnetResBlock(3, ([in_chans] + skip)[r], c, kernel_size=3, stride=1 if r == 0 else 2, norm_name="instance")
            for r, c in enumerate(skip))
        self.image_fuse = nn.ModuleDict({
            str(n_up - r): UnetResBlock(3, chans[n_up - r] + c + (in_chans if r == 0 else 0), chans[n_up - r],
                                        kernel_size=3, stride=1, norm_name="instance")
            for r, c in enumerate(skip)})

    def forward(self, stages: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """stages: N x ``[B, C, d, h, w]``; image ``[B, 1, D, H, W]`` (``D = d * patch``) -> ``M [B, Cm, D, H, W]``."""
        image_skips = []  # [B, s_r, D / 2^r, ...] per stem level r
        for block in self.image_stem:
            image_skips.append(block(image_skips[-1] if image_skips else image.to(self.final.weight.dtype)))
        x = self.base(torch.cat([stages[-1], *[stages[s] for s in self.base_stages]], dim=1))  # [B, C, d, h, w]
        for j in range(1, self.n_up):
            x = self.ups[j - 1](x)  # x2 per axis: [B, c_{j-1}, ...] -> [B, c_j, 2x ...]
            if j in self.level_stage:
                x = x + self.skips[str(j)](stages[self.level_stage[j]])  # U-shape skip, same size
            x = self.act(self.norms[j - 1](x))
            if j <= len(self.convs):
                x = x + self.act(self.convs[j - 1](x))
            if str(j) in self.image_fuse:  # [B, c_j + s_r, ...] -> [B, c_j, ...]
                x = self.image_fuse[str(j)](torch.cat([x, image_skips[self.n_up - j].to(x.dtype)], dim=1))
        # last x2 to full resolution, the image appended as a channel in the same pass: [B, c_n + 1, D, H, W]
        x = self.ups[-1](x, extra=image.to(x.dtype))
        if self.n_up in self.level_stage:  # only when patch_size == 2
            x = x + torch.cat([self.skips[str(self.n_up)](stages[self.level_stage[self.n_up]]), torch.zeros_like(image)], 1)
        if image_skips:  # [B, c_n + 1 + s_0, D, H, W] -> [B, c_n, ...], then the image again for the last conv
            x = self.image_fuse[str(self.n_up)](torch.cat([x, image_skips[0].to(x.dtype)], dim=1))
            x = torch.cat([x, image.to(x.dtype)], dim=1)
        m = self.final(x)  # the last conv over [mask features, image] -> M [B, Cm, D, H, W]
        # GELU in place when no gradient is needed: M is the largest tensor of the model (Cm x D x H x W)
        return self.act(m) if torch.is_grad_enabled() else torch.ops.aten.gelu_(m)


def project_mask_features(mask_features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor,
                          slab_voxels: int = 1 << 16) -> torch.Tensor:
    """``<w, M> + b`` per voxel: mask_features ``[B, Cm, D, H, W]``, weights ``[B, K, Cm]``, bias ``[B, K]`` ->
    ``[B, K, D, H, W]`` in the weights' dtype.

    When ``M`` is stored at a lower precision than the weights (e.g. the float16 encodings the server caches)
    and no gradient is needed, ``M`` is converted one depth slab (~``slab_voxels`` voxels) at a time into one
    reused buffer and multiplied straight into the output: no float32 copy of ``M`` (128 MiB for a 128^3
    window) and no fresh memory per slab (on CPU, fresh pages cost more than the arithmetic)."""
    m = mask_features.permute(0, 2, 3, 4, 1)  # [B, D, H, W, Cm] (a view for channels_last_3d)
    b, d, h, w, c = m.shape
    k, dtype = weights.shape[1], weights.dtype
    if m.dtype == dtype or torch.is_grad_enabled():
        return torch.einsum("bdhwc,bkc->bkdhw", m.to(dtype), weights) + bias[..., None, None, None]
    out = torch.empty(b, k, d, h, w, dtype=dtype, device=m.device)
    step = max(1, min(d, slab_voxels // max(1, h * w)))
    buffer = torch.empty(step, h, w, c, dtype=dtype, device=m.device)
    for i in range(b):
        for z in range(0, d, step):
            n = min(step, d - z)
            slab = buffer[:n]
            slab.copy_(m[i, z:z + n])  # [n, H, W, Cm] -> float32, in place
            torch.mm(weights[i], slab.view(-1, c).t(), out=out[i, :, z:z + n].view(k, -1))  # [K, n*H*W]
    return out.add_(bias[..., None, None, None])


class MaskDecoder3D(nn.Module):
    """Per-prompt part of the decoder (SAM's ``MaskDecoder`` with one mask token and no IoU head)."""

    def __init__(self, dim: int, mask_dim: int, transformer_depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(transformer_depth, dim, num_heads, mlp_dim)
        self.mask_tokens = nn.Embedding(1, dim)  # SAM's single-mask output token (row 0 of SAM's 4)
        self.pe_layer = PositionEmbeddingRandom3D(dim // 2)
        self.output_hypernetworks_mlp = MLP(dim, dim, mask_dim + 1, 3)  # -> Cm weights + 1 bias
        self.coarse_mlp = MLP(dim, dim, dim, 3)
        self.mask_dim = mask_dim

    def forward(self, image_embedding: torch.Tensor, dense: torch.Tensor, sparse: torch.Tensor, sparse_mask: torch.Tensor,
                mask_features: torch.Tensor, return_tokens: bool = False):
        """image_embedding ``[B, C, d, h, w]``, dense ``[B*K, C, d, h, w]``, sparse ``[K, T, C]`` (shared by
        the batch) or ``[B*K, T, C]`` (per image and prompt: clicks), sparse_mask ``[K, T]`` / ``[B*K, T]``,
        mask_features ``[B, Cm, D, H, W]`` -> logits ``[B, K, D, H, W]`` (and, with ``return_tokens``, the
        sparse tokens after the two-way transformer ``[B*K, T, C]``)."""
        b, c = image_embedding.shape[:2]
        grid = image_embedding.shape[2:]
        k = dense.shape[0] // b
        n, t, _ = sparse.shape
        if n not in (k, b * k):
            raise ValueError(f"sparse tokens for {n} prompts, expected {k} or {b * k} (B={b}, K={k})")
        # the mask token starts as SAM's learned token + the sentence embedding (first sparse token), so it
        # carries the prompt's identity from the first layer on
        mask_token = self.mask_tokens.weight[None].to(sparse.dtype) + sparse[:, :1]  # [n, 1, C]
        tokens = torch.cat([mask_token, sparse], dim=1)  # [n, 1+T, C]
        tmask = torch.cat([torch.ones_like(sparse_mask[:, :1]), sparse_mask], dim=1)  # [n, 1+T]
        if n == k:  # shared by the batch: the same tokens for each image
            tokens = tokens[None].expand(b, k, 1 + t, c).reshape(b * k, 1 + t, c)
            sentence = sparse[None, :, 0].expand(b, k, c).reshape(b * k, c)  # [B*K, C]
            tmask = tmask[None].expand(b, k, 1 + t).reshape(b * k, 1 + t)
        else:
            sentence = sparse[:, 0]  # [B*K, C]
        src = image_embedding.repeat_interleave(k, dim=0) + dense  # [B*K, C, d, h, w]
        pe = self.pe_layer(grid)[None].to(src.dtype)  # [1, C, d, h, w]
        hs, src_out = self.transformer(src, pe, tokens, tmask)  # [B*K, 1+T, C], [B*K, N, C]
        mask_token = hs[:, 0] + sentence  # [B*K, C]; the sentence again: SAM's first layer has no residual
        hyper = self.output_hypernetworks_mlp(mask_token).view(b, k, self.mask_dim + 1)
        weights, bias = hyper[..., :-1], hyper[..., -1]  # [B, K, Cm], [B, K]
        fine = project_mask_features(mask_features, weights, bias)  # [B, K, D, H, W]
        coarse = torch.einsum("bnc,bc->bn", src_out, self.coarse_mlp(mask_token)) / math.sqrt(c)  # [B*K, N]
        coarse = upsample_trilinear(coarse.view(b * k, 1, *grid), fine.shape[-3:])  # [B*K, 1, D, H, W], float32
        coarse = coarse.view(b, k, *fine.shape[-3:]).to(fine.dtype)
        logits = fine + coarse if torch.is_grad_enabled() else fine.add_(coarse)  # [B, K, D, H, W]
        return (logits, hs[:, 1:]) if return_tokens else logits
