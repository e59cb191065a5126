"""3D image encoder: SAM's ViT in 3D (paper Sec. III-B, Fig. 1(B) image processor and Fig. 1(C) blocks).

* ``PatchEmbed3D``: SAM's 2D ``patch_embed.proj`` as a frozen ``1 x p x p`` Conv3d + a trainable
  depthwise ``p x 1 x 1`` Conv3d over depth (the paper's ``k x k x k`` approximation).
* positions: SAM's frozen ``(h, w)`` table resized to the token grid + a learnable, zero-initialised
  depth table (resized for other depths).
* ``Block3D`` / ``Attention3D``: SAM's block with SAM's parameter names, attention over ``D*H*W``
  tokens in 3D windows (Swin-style shift, padding masked) with decomposed relative positions
  along ``d`` (new, zero-init), ``h`` and ``w`` (SAM's), computed with ``scaled_dot_product_attention``;
  each block ends with the 3D adapter of Eq. (1).
* ``necks``: one 3D bottleneck per stage (Sec. III-B "Bottleneck"), trained from scratch; their
  outputs are the hierarchical features ``V'_1..V'_4`` of Eq. (4)-(5).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Optional, Sequence, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import DropPath

from .adapter import Adapter3D
from .common import LayerNorm3d, MLPBlock


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """SAM's ``get_rel_pos`` (resize the table by linear interpolation, then gather), with the
    index tensors built on the table's device. Returns ``[q_size, k_size, head_dim]``."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(rel_pos.float().t()[None], size=max_rel_dist, mode="linear")  # [1, hd, L]
        rel_pos = resized[0].t().to(rel_pos.dtype)  # [L, hd]
    dev = rel_pos.device
    q_coords = torch.arange(q_size, device=dev)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=dev)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def balanced_window(grid: int, window: int) -> int:
    """Window length along one axis: the whole axis if it fits, else the smallest equal split
    into ``ceil(grid / window)`` windows (less padding than a fixed window)."""
    if window <= 0 or grid <= window:
        return grid
    return math.ceil(grid / math.ceil(grid / window))


def window_partition3d(x: torch.Tensor, ws: Sequence[int]) -> torch.Tensor:
    """``[B, Dp, Hp, Wp, C]`` (multiples of ``ws``) -> ``[B * nW, wd, wh, ww, C]`` (batch-major)."""
    b, dp, hp, wp, c = x.shape
    wd, wh, ww = ws
    x = x.view(b, dp // wd, wd, hp // wh, wh, wp // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd, wh, ww, c)


def window_unpartition3d(windows: torch.Tensor, ws: Sequence[int], padded: Sequence[int], batch: int) -> torch.Tensor:
    """Inverse of :func:`window_partition3d`: ``[B * nW, wd, wh, ww, C]`` -> ``[B, Dp, Hp, Wp, C]``."""
    dp, hp, wp = padded
    wd, wh, ww = ws
    x = windows.view(batch, dp // wd, hp // wh, wp // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, dp, hp, wp, -1)


def window_mask3d(
    grid: Sequence[int], padded: Sequence[int], ws: Sequence[int], shift: Sequence[int], device: torch.device
) -> Optional[torch.Tensor]:
    """Which keys each query may see inside its window: ``[nW, N, N]`` bool, or None if all.

    In the (rolled, padded) grid a token gets a region id from (a) whether it wrapped around in the
    cyclic shift (Swin's mask) and (b) whether it is padding; attention is allowed only between equal
    ids. Every token sees at least itself, so no softmax row is empty.
    """
    region = torch.zeros(padded, dtype=torch.long, device=device)
    pad = torch.zeros(padded, dtype=torch.bool, device=device)
    for axis, (g, gp, s) in enumerate(zip(grid, padded, shift)):
        r = torch.arange(gp, device=device)
        shape = [1, 1, 1]
        shape[axis] = gp
        wrapped = (r >= gp - s) if s > 0 else torch.zeros_like(r, dtype=torch.bool)
        region = region * 2 + wrapped.long().view(shape)
        pad = pad | (((r + s) % gp) >= g).view(shape)
    ids = region * 2 + pad.long()  # [Dp, Hp, Wp]
    if bool((ids == ids.flatten()[0]).all()):
        return None
    ids = window_partition3d(ids[None, ..., None], ws).flatten(1)  # [nW, N]
    return ids[:, :, None] == ids[:, None, :]


class PatchEmbed3D(nn.Module):
    """Frozen ``1 x p x p`` conv (SAM's 2D patch embedding) + trainable depthwise ``p x 1 x 1`` conv."""

    def __init__(self, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768) -> None:
        super().__init__()
        p = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(1, p, p), stride=(1, p, p))
        self.depth_conv = nn.Conv3d(embed_dim, embed_dim, kernel_size=(p, 1, 1), stride=(p, 1, 1), groups=embed_dim)
        # start as the mean of the p per-slice 2D embeddings: the SAM embedding of a depth-constant patch
        nn.init.constant_(self.depth_conv.weight, 1.0 / p)
        nn.init.zeros_(self.depth_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, 1, D, H, W] -> [B, C, D, H/p, W/p]
        x = self.depth_conv(x)  # -> [B, C, D/p, H/p, W/p]
        return x.permute(0, 2, 3, 4, 1)  # -> [B, d, h, w, C]


class Attention3D(nn.Module):
    """SAM's ``Attention`` (``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``) over 3D token windows,
    plus ``rel_pos_d`` for the depth axis; softmax via ``scaled_dot_product_attention``."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        rel_pos_hw_size: int = 14,
        rel_pos_d_size: int = 8,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_hw_size - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_hw_size - 1, head_dim))
            self.rel_pos_d = nn.Parameter(torch.zeros(2 * rel_pos_d_size - 1, head_dim))

    def rel_pos_bias(self, q: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Decomposed 3D relative-position term (MViTv2 / SAM, plus depth): ``[Bw, heads, N, N]``."""
        d, h, w = size
        bw, nh, n, hd = q.shape
        r_q = q.reshape(bw * nh, d, h, w, hd)
        rd = get_rel_pos(d, d, self.rel_pos_d).to(q.dtype)  # [d, d, hd]
        rh = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
        rw = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
        rel_d = torch.einsum("bdhwc,dkc->bdhwk", r_q, rd)  # [b, d, h, w, d']
        rel_h = torch.einsum("bdhwc,hkc->bdhwk", r_q, rh)  # [b, d, h, w, h']
        rel_w = torch.einsum("bdhwc,wkc->bdhwk", r_q, rw)  # [b, d, h, w, w']
        bias = rel_d[..., :, None, None] + rel_h[..., None, :, None] + rel_w[..., None, None, :]
        return bias.reshape(bw, nh, n, n)

    def forward(self, x: torch.Tensor, allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: ``[Bw, d, h, w, C]`` windows; allowed: ``[nW, N, N]`` bool (``Bw = B * nW``) -> ``[Bw, d, h, w, C]``."""
        bw, d, h, w, c = x.shape
        n = d * h * w
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # [3, Bw, heads, N, hd]
        q, k, v = qkv.unbind(0)
        bias: Optional[torch.Tensor] = self.rel_pos_bias(q, (d, h, w)) if self.use_rel_pos else None
        if allowed is not None:
            nw = allowed.shape[0]
            neg = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
            if bias is None:
                bias = neg[None, :, None].expand(bw // nw, nw, 1, n, n).reshape(bw, 1, n, n)
            else:
                bias = (bias.view(bw // nw, nw, self.num_heads, n, n) + neg[None, :, None]).view(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [Bw, heads, N, hd]
        out = out.transpose(1, 2).reshape(bw, d, h, w, c)
        return self.proj(out)


class Block3D(nn.Module):
    """SAM's ``Block`` (``norm1``, ``attn``, ``norm2``, ``mlp``) on ``[B, D, H, W, C]`` + the Eq. (1) adapter."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: Type[nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        act_layer: Type[nn.Module] = nn.GELU,
        use_rel_pos: bool = True,
        window_size: int = 0,
        shift: bool = False,
        rel_pos_hw_size: int = 14,
        rel_pos_d_size: int = 8,
        adapter_dim: int = 64,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention3D(dim, num_heads, qkv_bias, use_rel_pos, rel_pos_hw_size, rel_pos_d_size)
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)
        self.adapter = Adapter3D(dim, adapter_dim) if adapter_dim > 0 else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # stochastic depth (training only)
        self.window_size = window_size  # 0 = global attention
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.window_attention(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return self.adapter(x)

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention inside (shifted) 3D windows; ``[B, D, H, W, C]`` -> same shape."""
        b, d, h, w, _ = x.shape
        grid = (d, h, w)
        ws = tuple(balanced_window(g, self.window_size) for g in grid)
        if ws == grid:
            return self.attn(x)
        shift = tuple(s // 2 if (self.shift and s < g) else 0 for s, g in zip(ws, grid))
        padded = tuple(g + (-g) % s for g, s in zip(grid, ws))
        x = F.pad(x, (0, 0, 0, padded[2] - w, 0, padded[1] - h, 0, padded[0] - d))  # [B, Dp, Hp, Wp, C]
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        allowed = window_mask3d(grid, padded, ws, shift, x.device)
        out = self.attn(window_partition3d(x, ws), allowed)  # [B*nW, wd, wh, ww, C]
        x = window_unpartition3d(out, ws, padded, b)  # [B, Dp, Hp, Wp, C]
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w].contiguous()


class Neck3D(nn.Sequential):
    """SAM's neck with 3D convs (trained from scratch): 1x1x1 conv -> LN -> 3x3x3 conv -> LN."""

    def __init__(self, dim: int, out_chans: int) -> None:
        super().__init__(
            nn.Conv3d(dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )


class ImageEncoderViT3D(nn.Module):
    """The 3D SAM image encoder; returns the 4 stage features ``V'_i`` (Eq. 4-5), each ``[B, out_chans, d, h, w]``."""

    def __init__(
        self,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 8,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        stage_indexes: Sequence[int] = (2, 5, 8, 11),
        pos_embed_size: int = 64,
        depth_embed_size: int = 8,
        rel_pos_window_size: int = 14,
        adapter_dim: int = 64,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.stage_indexes = tuple(stage_indexes)
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_embed_size, pos_embed_size, embed_dim))  # SAM's (h, w) table
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_embed_depth = nn.Parameter(torch.zeros(1, depth_embed_size, embed_dim))  # new d table, zero-init
        self.blocks = nn.ModuleList()
        n_windowed = 0
        for i in range(depth):
            is_global = i in global_attn_indexes or window_size <= 0
            self.blocks.append(
                Block3D(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    use_rel_pos=use_rel_pos,
                    window_size=0 if is_global else window_size,
                    shift=(not is_global) and n_windowed % 2 == 1,  # W-MSA / SW-MSA alternate as in Swin
                    rel_pos_hw_size=pos_embed_size if is_global else rel_pos_window_size,
                    rel_pos_d_size=depth_embed_size if is_global else window_size,
                    adapter_dim=adapter_dim,
                    drop_path=drop_path_rate * i / max(1, depth - 1),  # linear rule (DeiT / Swin): 0 .. rate
                )
            )
            n_windowed += 0 if is_global else 1
        self.necks = nn.ModuleList([Neck3D(embed_dim, out_chans) for _ in self.stage_indexes])

    def positional_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        """Frozen (h, w) table resized to the grid + learnable depth table: ``[1, d, h, w, C]``."""
        d, h, w = grid
        pe = self.pos_embed.permute(0, 3, 1, 2)  # [1, C, P, P]
        if pe.shape[-2:] != (h, w):
            pe = F.interpolate(pe.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        pd = self.pos_embed_depth.permute(0, 2, 1)  # [1, C, Dref]
        if pd.shape[-1] != d:
            pd = F.interpolate(pd.float(), size=d, mode="linear", align_corners=False)
        return pe.permute(0, 2, 3, 1)[:, None] + pd.permute(0, 2, 1)[:, :, None, None]  # [1, d, h, w, C]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)  # [B, 1, D, H, W] -> [B, d, h, w, C]
        x = x + self.positional_embedding(x.shape[1:4]).to(x.dtype)
        stages: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.stage_indexes:
                j = len(stages)
                stages.append(self.necks[j](x.permute(0, 4, 1, 2, 3)))  # -> [B, out_chans, d, h, w]
        return stages
