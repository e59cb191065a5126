"""Hierarchical cross-attention (Sec. III-C.4, Fig. 2, Eq. 6-8): each stage's visual tokens attend
to the projected text tokens; the 4 outputs are fused into the dense cross-modal prompt embedding."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class StageCrossAttention(nn.Module):
    """One stage: ``O_i = softmax(Q_i K^T / sqrt(d_k)) V`` (Eq. 6-7), queries from the visual tokens of
    stage ``i``, keys and values from the text tokens (padding masked)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_visual = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, visual: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """visual ``[B, N, C]``, text ``[K, L, C]``, text_mask ``[K, L]`` (True = token) -> ``[B*K, N, C]`` (b-major)."""
        b, n, c = visual.shape
        k, l, _ = text.shape
        h = self.num_heads
        q = self.q_proj(self.norm_visual(visual)).view(b, 1, n, h, c // h).transpose(2, 3)  # [B, 1, h, N, hd]
        kk = self.k_proj(text).view(1, k, l, h, c // h).transpose(2, 3)  # [1, K, h, L, hd]
        vv = self.v_proj(text).view(1, k, l, h, c // h).transpose(2, 3)
        q = q.expand(b, k, h, n, c // h).reshape(b * k, h, n, c // h)
        kk = kk.expand(b, k, h, l, c // h).reshape(b * k, h, l, c // h)
        vv = vv.expand(b, k, h, l, c // h).reshape(b * k, h, l, c // h)
        mask = text_mask[None, :, None, None, :].expand(b, k, 1, 1, l).reshape(b * k, 1, 1, l)
        out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)  # [B*K, h, N, hd]
        return self.out_proj(out.transpose(1, 2).reshape(b * k, n, c))


class HierarchicalCrossAttention(nn.Module):
    """Eq. (8): ``O = [O_1, ..., O_N]`` concatenated over channels and fused by a linear layer to
    the prompt width; the result is SAM's dense prompt embedding, ``[B*K, C, d, h, w]``."""

    def __init__(self, dim: int, num_stages: int = 4, num_heads: int = 8) -> None:
        super().__init__()
        self.stages = nn.ModuleList([StageCrossAttention(dim, num_heads) for _ in range(num_stages)])
        self.fuse = nn.Sequential(nn.Linear(num_stages * dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, stages: Sequence[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """stages: N x ``[B, C, d, h, w]``; text ``[K, L, C]`` -> dense prompt ``[B*K, C, d, h, w]``."""
        b, c, d, h, w = stages[0].shape
        outs = [
            attn(s.flatten(2).transpose(1, 2), text, text_mask)  # [B, C, d,h,w] -> [B, N, C] -> [B*K, N, C]
            for attn, s in zip(self.stages, stages)
        ]
        fused = self.norm(self.fuse(torch.cat(outs, dim=-1)))  # [B*K, N, N_stages*C] -> [B*K, N, C]
        return fused.transpose(1, 2).reshape(-1, c, d, h, w)
