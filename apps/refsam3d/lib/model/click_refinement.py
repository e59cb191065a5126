"""Local click refinement: a full-resolution edit of the logits around each click (new; SAM has no such part).

SAM's clicks act through the two-way transformer on the token grid: one token per ``patch^3`` voxels
(8^3 for ``small``, 16^3 for ViT-B), too coarse to move a boundary by the voxel or two an annotator's
click asks for. Here each click's output token (after the two-way transformer, so it has seen the image,
the text and the other clicks) becomes, through a hypernetwork MLP as SAM's mask token does, ``Cm`` weights
and a bias over the mask features ``M``; their product is added to the logits under a Gaussian window
centred on the click, of learned width::

    logits(x) += g(x - c) * (<w_c, M(x)> + b_c),   g(u) = exp(-|u|^2 / (2 sigma^2))

evaluated only in a box of ``reach * sigma`` voxels around the click. The hypernetwork's last layer starts
at zero: untrained (or loaded from a checkpoint written before this part), it changes nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .common import MLP


class ClickRefinement3D(nn.Module):
    """Click output tokens + positions -> a local edit of the logits at the mask features' resolution."""

    def __init__(self, dim: int, mask_dim: int, sigma_voxels: float = 4.0, reach: float = 3.0,
                 max_radius: int = 24) -> None:
        super().__init__()
        self.hypernetwork = MLP(dim, dim, mask_dim + 1, 3)  # -> Cm weights + 1 bias per click
        last = self.hypernetwork.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma_voxels)))  # window width, in voxels of M
        self.reach = reach
        self.max_radius = max_radius

    def radius(self) -> int:
        """Half-size of the box evaluated around a click, in voxels."""
        return min(self.max_radius, int(math.ceil(self.reach * float(self.log_sigma.detach().exp()))))

    def forward(self, logits: torch.Tensor, mask_features: torch.Tensor, click_tokens: torch.Tensor,
                positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``logits [B, K, D, H, W]`` and ``mask_features [B, Cm, D, H, W]`` on one grid; ``click_tokens
        [B*K, P, C]``; ``positions [B*K, P, 3]`` continuous coordinates on that grid (voxel ``j`` spans
        ``[j, j+1)``); ``valid [B*K, P]`` (False: padding) -> edited logits ``[B, K, D, H, W]``."""
        b, k = logits.shape[:2]
        shape = logits.shape[2:]
        hyper = self.hypernetwork(click_tokens)  # [B*K, P, Cm + 1]
        sigma = self.log_sigma.float().exp()
        radius = self.radius()
        out = logits.clone() if torch.is_grad_enabled() else logits
        centres, keep = positions.detach().float().cpu().tolist(), valid.cpu().tolist()
        for n, (row, ok) in enumerate(zip(centres, keep)):
            image, prompt = divmod(n, k)
            for p, centre in enumerate(row):
                box = tuple(slice(max(0, math.floor(c) - radius), min(size, math.floor(c) + radius + 1))
                            for c, size in zip(centre, shape))
                if not ok[p] or any(s.start >= s.stop for s in box):
                    continue  # padding, or a click whose window misses this grid (another sliding window's)
                feats = mask_features[image][(slice(None), *box)]  # [Cm, d, h, w]
                w = hyper[n, p]
                local = torch.einsum("c,cdhw->dhw", w[:-1], feats.to(w.dtype)) + w[-1]  # [d, h, w]
                window = _gaussian_window(box, centre, sigma, local.device)  # [d, h, w], float32
                out[image, prompt][box] += (window * local.float()).to(out.dtype)
        return out


def _gaussian_window(box: tuple[slice, ...], centre: list[float], sigma: torch.Tensor,
                     device: torch.device) -> torch.Tensor:
    """``exp(-|x - centre|^2 / (2 sigma^2))`` at the voxel centres (``j + 0.5``) of ``box``."""
    axes = [torch.arange(s.start, s.stop, device=device, dtype=torch.float32) + 0.5 - c for s, c in zip(box, centre)]
    dist2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return torch.exp(-dist2 / (2 * sigma.to(device) ** 2))
