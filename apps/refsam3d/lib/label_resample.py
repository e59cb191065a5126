"""Nearest-neighbour resampling of a label map onto another grid, exactly as MONAI's ``SpatialResample`` does it,
but without its float grid when the two grids are axis-aligned to each other.

MONAI (``SpatialResample(mode="nearest", padding_mode="zeros", dtype=float32)``) builds a float grid of
3 coordinates per output voxel and samples with ``grid_sample``: for a 512 x 512 x 1059 CT that is 3.3 GB of
grid, more for the base grid ``affine_grid`` multiplies, and the label map as float32.  When the transform between
the grids maps each output axis onto one input axis (any scale, flip or axis permutation: every grid a
``Spacingd`` / ``Orientationd`` pipeline produces from an axis-aligned image), each output index along an axis
picks its input index independently of the other axes, so the resampling is three index gathers.

Exactness: the index chosen along each axis is computed by the very kernels MONAI uses (MONAI's
``to_norm_affine`` of the same 4 x 4 matrix, ``torch.nn.functional.affine_grid`` and ``grid_sample`` on one line
of the grid), so ties and rounding resolve as they do in MONAI; the other axes enter those kernels only
multiplied by exact zeros.  Only the label map's bounding box is gathered (the rest of the output is 0, which is
also what MONAI's nearest sampling gives there).  Oblique transforms keep MONAI's general path.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import AFFINE_TOL
from monai.networks.utils import to_norm_affine
from monai.transforms import SpatialResample


def smallest_int_dtype(max_value: int, min_value: int = 0) -> torch.dtype:
    """uint8 when the values fit, else int16, else int32."""
    if min_value >= 0 and max_value <= 255:
        return torch.uint8
    if min_value >= -32768 and max_value <= 32767:
        return torch.int16
    return torch.int32


def voxel_transform(src_affine, dst_affine) -> np.ndarray:
    """Output voxel index -> input voxel index (4 x 4, float64), as MONAI's ``spatial_resample`` solves it."""
    s = np.asarray(src_affine, dtype=np.float64)
    d = np.asarray(dst_affine, dtype=np.float64)
    return np.linalg.solve(s, d)


def axis_pairing(xform: np.ndarray) -> Optional[List[int]]:
    """For each output axis the one input axis it maps onto, when ``xform``'s 3 x 3 part has exactly one
    non-zero per row and column (exact zeros elsewhere); None for an oblique transform."""
    m = np.asarray(xform)[:3, :3]
    nz = m != 0
    if not (nz.sum(axis=0) == 1).all() or not (nz.sum(axis=1) == 1).all():
        return None
    return [int(np.flatnonzero(nz[:, p])[0]) for p in range(3)]


def _normalized_theta(xform: np.ndarray, src_size: Sequence[int], dst_size: Sequence[int]) -> torch.Tensor:
    """MONAI's ``AffineTransform`` theta for float32 resampling: normalised, then reverse-indexed (grid x = last axis)."""
    theta = torch.as_tensor(xform, dtype=torch.float64).to(torch.float32)[None].clone()
    theta = to_norm_affine(theta, list(src_size), list(dst_size), align_corners=False, zero_centered=False)
    rev = torch.as_tensor([2, 1, 0])
    theta[:, :3] = theta[:, rev]
    theta[:, :, :3] = theta[:, :, rev]
    return theta


def nearest_indices(xform: np.ndarray, src_size: Sequence[int], dst_size: Sequence[int], pairing: List[int]) -> List[torch.Tensor]:
    """Per output axis p, the input index (along input axis ``pairing[p]``) nearest sampling picks for each output
    index, or -1 where it falls outside the input (zero padding)."""
    theta = _normalized_theta(xform, src_size, dst_size)
    out = []
    for p, c in enumerate(pairing):
        line = [1, 1, 1]
        line[p] = int(dst_size[p])
        grid = F.affine_grid(theta[:, :3], size=[1, 1, *line], align_corners=False)  # [1, *line, 3]
        g = torch.zeros_like(grid)
        gc = 2 - c  # grid coordinate (x, y, z) of input axis c
        g[..., gc] = grid[..., gc]  # the other coordinates at 0: the centre of a one-voxel probe axis
        probe_shape = [1, 1, 1]
        probe_shape[c] = int(src_size[c])
        probe = torch.arange(1, int(src_size[c]) + 1, dtype=torch.float32).reshape(1, 1, *probe_shape)
        picked = F.grid_sample(probe, g, mode="nearest", padding_mode="zeros", align_corners=False)
        out.append(picked.reshape(-1).round().to(torch.int64) - 1)
    return out


def _bounding_box(label: torch.Tensor) -> Optional[List[Tuple[int, int]]]:
    """Per axis (first, last) index holding a non-zero voxel; None for an empty map."""
    nz = label != 0
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = torch.nonzero(nz.any(dim=others[1]).any(dim=others[0])).flatten()
        if hit.numel() == 0:
            return None
        box.append((int(hit[0]), int(hit[-1])))
    return box


def resample_separable(label: torch.Tensor, xform: np.ndarray, dst_size: Sequence[int], pairing: List[int]) -> torch.Tensor:
    """``label [D, H, W]`` (integer) resampled by nearest neighbour onto ``dst_size``: index gathers over its bounding box."""
    dst_size = [int(s) for s in dst_size]
    out = torch.zeros(dst_size, dtype=label.dtype)
    box = _bounding_box(label)
    if box is None:
        return out
    indices = nearest_indices(xform, label.shape, dst_size, pairing)
    crop = label[box[0][0] : box[0][1] + 1, box[1][0] : box[1][1] + 1, box[2][0] : box[2][1] + 1]
    crop = crop.permute(*pairing)  # axis p of crop is input axis pairing[p]
    where = []
    for p, c in enumerate(pairing):
        lo, hi = box[c]
        inside = torch.nonzero((indices[p] >= lo) & (indices[p] <= hi)).flatten()
        if inside.numel() == 0:
            return out
        a, b = int(inside[0]), int(inside[-1]) + 1  # nearest indices are monotonic: one run of output indices
        crop = crop.index_select(p, indices[p][a:b] - lo)
        where.append(slice(a, b))
    out[tuple(where)] = crop
    return out


def resample_label_map(label: torch.Tensor, src_affine, dst_affine, dst_size: Sequence[int]) -> torch.Tensor:
    """``label [D, H, W]`` (integer values, any dtype) from the grid ``src_affine`` onto ``dst_affine`` / ``dst_size``:
    the values of MONAI's float32 nearest ``SpatialResample`` (zero padding), as the smallest integer dtype that holds them."""
    label = label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(label)
    if label.is_floating_point():
        label = torch.round(label)
    lo, hi = (int(label.min()), int(label.max())) if label.numel() else (0, 0)
    label = label.to(smallest_int_dtype(hi, lo))
    xform = voxel_transform(src_affine, dst_affine)
    if np.allclose(xform, np.eye(4), atol=AFFINE_TOL) and list(label.shape) == [int(s) for s in dst_size]:
        return label  # MONAI returns the input unchanged too
    pairing = axis_pairing(xform)
    if pairing is not None and label.ndim == 3:
        return resample_separable(label, xform, dst_size, pairing)
    return _monai_resample(label, src_affine, dst_affine, dst_size)


def _monai_resample(label: torch.Tensor, src_affine, dst_affine, dst_size: Sequence[int]) -> torch.Tensor:
    """MONAI's general path (oblique transforms): float32 grid sampling of the whole map."""
    from monai.data import MetaTensor

    dtype = label.dtype
    img = MetaTensor(label[None].float(), affine=torch.as_tensor(np.asarray(src_affine), dtype=torch.float64))
    resampler = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)
    with resampler.trace_transform(False):
        out = resampler(img, dst_affine=torch.as_tensor(np.asarray(dst_affine), dtype=torch.float64),
                        spatial_size=[int(s) for s in dst_size])
    return torch.round(out.as_tensor()[0]).to(dtype)
