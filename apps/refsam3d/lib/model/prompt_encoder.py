"""Click prompts (SAM's ``PromptEncoder`` in 3D): points -> sparse tokens, previous mask -> dense prompt.

* A point (voxel position in the caller's grid, positive or negative) becomes
  ``PE(position) + point_embeddings[label]``, with ``PE`` the 3D random-Fourier encoding of the
  mask decoder (the SAME gaussian matrix, :class:`PositionEmbeddingRandom3D`, shared, not copied),
  the position normalised exactly as the decoder's token-grid PE normalises its token centres.
  Padding points (label -1) get ``not_a_point_embed`` and are masked out of attention.
* ``no_text_embed``: the learned token that stands in for the sentence + word tokens of a prompt
  with no text ("segment what I clicked").
* The previous mask (logits) as a dense prompt: SAM's ``mask_downscaling`` convs in 3D, from the
  scaled + padded input grid to the token grid; the last conv starts at zero, so an untrained
  encoder changes nothing.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from .common import LayerNorm3d
from .mask_decoder import PositionEmbeddingRandom3D


class PointPromptEncoder3D(nn.Module):
    """Points ``[N, P, 3]`` + labels ``[N, P]`` -> tokens ``[N, P, C]`` + mask ``[N, P]``; mask logits -> dense."""

    def __init__(self, dim: int, patch_size: int, pe_layer: PositionEmbeddingRandom3D) -> None:
        super().__init__()
        self._pe = (pe_layer,)  # shared with the mask decoder; a tuple keeps it out of this module's state dict
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(2))  # 0 = negative, 1 = positive
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.no_text_embed = nn.Embedding(1, dim)
        n = int(round(math.log2(patch_size)))
        s1 = 2 ** (n // 2)  # SAM: two x2 convs for x4; here two convs whose strides multiply to the patch size
        s2 = patch_size // s1
        hidden = max(dim // 4, 4)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, hidden, kernel_size=s1, stride=s1), LayerNorm3d(hidden), nn.GELU(),
            nn.Conv3d(hidden, dim, kernel_size=s2, stride=s2), LayerNorm3d(dim), nn.GELU(),
            nn.Conv3d(dim, dim, kernel_size=1),
        )
        nn.init.zeros_(self.mask_downscaling[-1].weight)
        nn.init.zeros_(self.mask_downscaling[-1].bias)

    @property
    def pe_layer(self) -> PositionEmbeddingRandom3D:
        return self._pe[0]

    def encode_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """Normalised positions ``[..., 3]`` in (0, 1) -> ``[..., C]``, the decoder's grid PE formula."""
        gm = self.pe_layer.positional_encoding_gaussian_matrix.float()
        with torch.autocast(device_type=gm.device.type, enabled=False):
            phase = 2 * math.pi * ((2 * coords.float() - 1) @ gm)
            return torch.cat([phase.sin(), phase.cos()], dim=-1)

    def embed_points(self, normalised: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """normalised ``[N, P, 3]`` (token-grid fractions), labels ``[N, P]`` (1 / 0 / -1) -> tokens, attend mask."""
        valid = labels >= 0
        pe = self.encode_coords(normalised) * valid[..., None]  # padding: no position
        w = self.point_embeddings[0].weight.dtype
        tokens = pe.to(w)
        tokens = tokens + (labels == 0)[..., None].to(w) * self.point_embeddings[0].weight
        tokens = tokens + (labels == 1)[..., None].to(w) * self.point_embeddings[1].weight
        tokens = tokens + (~valid)[..., None].to(w) * self.not_a_point_embed.weight
        return tokens, valid

    def embed_mask(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """``[N, 1, Dp, Hp, Wp]`` logits at the scaled + padded grid -> dense ``[N, C, Dp/p, Hp/p, Wp/p]``."""
        return self.mask_downscaling(mask_logits.to(self.mask_downscaling[0].weight.dtype))


def normalise_points(points: torch.Tensor, input_shape: Sequence[int], scaled_shape: Sequence[int],
                     padded_shape: Sequence[int]) -> torch.Tensor:
    """Voxel indexes ``[..., 3]`` (D, H, W) in the caller's grid -> fractions of the padded token-grid extent.

    Voxel ``v`` has its centre at ``v + 0.5``; ``input_scale`` (trilinear, ``align_corners=False``)
    maps it to ``(v + 0.5) * scaled / input`` and padding appends voxels after the end, so the
    fraction is ``(v + 0.5) * scaled / input / padded``: the decoder's token ``i`` of ``n`` sits at
    ``(i + 0.5) / n``, the centre of the voxels it covers.
    """
    factor = torch.tensor([s / (i * p) for i, s, p in zip(input_shape, scaled_shape, padded_shape)],
                          dtype=torch.float32, device=points.device)
    return (points.float() + 0.5) * factor
