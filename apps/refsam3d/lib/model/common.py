"""Small building blocks shared by the RefSAM3D components (3D counterparts of SAM's ``common.py``)."""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock  # noqa: F401  (re-exported: SAM's block MLP)
from segment_anything.modeling.mask_decoder import MLP  # noqa: F401  (re-exported: SAM's hypernetwork MLP)


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a ``[B, C, D, H, W]`` tensor (SAM's ``LayerNorm2d`` in 3D).

    Implemented as ``F.layer_norm`` on a channels-last view: no copy when the input is
    ``channels_last_3d`` and numerically safe under autocast.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 2, 3, 4, 1)  # [B, D, H, W, C]
        y = F.layer_norm(y, (y.shape[-1],), self.weight, self.bias, self.eps)
        return y.permute(0, 4, 1, 2, 3)  # [B, C, D, H, W]


@functools.lru_cache(maxsize=64)
def _linear_weights(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """``[n_out, n_in]`` matrix of 1D linear interpolation with ``align_corners=False`` (PyTorch's rule: source
    ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0, neighbours ``floor`` and ``floor + 1`` capped at ``n_in - 1``).
    Cached per size and device (built once, not on every decode); callers must not modify it."""
    src = ((torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = (src - lo).clamp(max=1.0)
    weights = torch.zeros(n_out, n_in, dtype=torch.float64, device=device)
    rows = torch.arange(n_out, device=device)
    weights.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights.float()


def upsample_trilinear(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="trilinear", align_corners=False)`` for ``[N, C, d, h, w]`` as three small
    matrix products (trilinear weights are separable): the same values within float rounding, several times
    faster for large upsampling factors (e.g. the decoder's 8^3 -> 128^3 token-grid term), in float32."""
    n, c, d, h, w = x.shape
    out_d, out_h, out_w = (int(s) for s in size)
    with torch.autocast(device_type=x.device.type, enabled=False):
        y = x.float().reshape(n * c, d, h, w)
        y = y @ _linear_weights(w, out_w, x.device).t()  # [NC, d, h, W]
        y = _linear_weights(h, out_h, x.device) @ y  # [NC, d, H, W]
        y = _linear_weights(d, out_d, x.device) @ y.reshape(n * c, d, out_h * out_w)  # [NC, D, H*W]
    return y.view(n, c, out_d, out_h, out_w)


class PatchConvTranspose3d(nn.ConvTranspose3d):
    """``ConvTranspose3d`` with ``kernel_size == stride`` (non-overlapping "un-patching").

    Same parameters and result as ``nn.ConvTranspose3d(cin, cout, k, stride=k)``, computed as one
    matmul (bias fused) plus a pixel-shuffle copy: PyTorch's CPU transposed 3D conv is ~5x slower.
    ``extra`` (``[B, Ce, D, H, W]`` at the output size) is appended as channels in the same copy,
    which saves a full-resolution ``torch.cat``. The output has ``channels_last_3d`` strides.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=scale, stride=scale)
        self.scale = scale

    def forward(self, x: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        b, c, d, h, w = x.shape
        s, co = self.scale, self.out_channels
        weight = self.weight.reshape(c, co * s**3).to(x.dtype)  # [Cin, Cout*s^3]
        rows = x.permute(0, 2, 3, 4, 1).reshape(-1, c)  # [B*d*h*w, Cin]
        if self.bias is not None:
            y = torch.addmm(self.bias.to(x.dtype).repeat_interleave(s**3), rows, weight)
        else:
            y = rows @ weight
        y = y.view(b, d, h, w, co, s, s, s).permute(0, 1, 5, 2, 6, 3, 7, 4)  # [B, d, s, h, s, w, s, Cout]
        ce = 0 if extra is None else extra.shape[1]
        out = torch.empty(b, d * s, h * s, w * s, co + ce, dtype=y.dtype, device=y.device)  # channels-last buffer
        out[..., :co].view(b, d, s, h, s, w, s, co).copy_(y)
        if extra is not None:
            out[..., co:].copy_(extra.permute(0, 2, 3, 4, 1))
        return out.permute(0, 4, 1, 2, 3)  # [B, Cout (+Ce), D, H, W]
