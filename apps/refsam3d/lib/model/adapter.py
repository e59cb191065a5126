"""3D adapter of Eq. (1) / Fig. 1(C): ``Adapter(X) = X + Act(DWConv3d(X W_down)) W_up``."""

from __future__ import annotations

from typing import Type

import torch
import torch.nn as nn


class Adapter3D(nn.Module):
    """Bottleneck adapter with a depthwise 3D conv after the down-projection (paper Eq. 1).

    ``up`` is zero-initialised so a freshly built model computes exactly the pre-trained SAM
    block (the adapter starts as the identity); gradients still reach ``down``/``dwconv`` after
    the first update of ``up``.
    """

    def __init__(self, dim: int, bottleneck: int, kernel_size: int = 3, act: Type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.dwconv = nn.Conv3d(bottleneck, bottleneck, kernel_size, padding=kernel_size // 2, groups=bottleneck)
        self.act = act()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, D, H, W, C]`` tokens -> same shape."""
        h = self.down(x)  # [B, D, H, W, r]
        h = self.dwconv(h.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)  # depthwise 3D conv, back to [B, D, H, W, r]
        return x + self.up(self.act(h))
