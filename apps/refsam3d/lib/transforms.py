"""Pre-processing shared by inference, training and evaluation.

``load_transforms`` gives the one pipeline every part of the project uses::

    LoadImaged (errors -> lib/image_errors.py; integer voxels stay integer, float64 -> float32) -> EnsureChannelFirstd
    -> CheckImaged (3D, one channel, non-empty, finite) -> Orientationd("RAS") -> Spacingd (image bilinear, label
    nearest; output float32) -> intensity by modality -> EnsureTyped(float32)

Memory and speed: the original-resolution volume is kept in its stored dtype (an int16 CT is not widened to
float32 before it is resampled), and bilinear resampling of axis-aligned grids is separable
(``lib/separable_spacing.py``: MONAI's result within float rounding, without its float64 copy and grids).

Intensity: CT in Hounsfield units, window ``ct_window`` (default [-1000, 1000] HU) mapped to
[0, 1] and clipped; MR by the 0.5th-99.5th percentile of the volume mapped to [0, 1] and clipped.
"""

from __future__ import annotations

import os
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)

from lib.image_errors import ImageNotFoundError, UnreadableImageError, UnusableImageError
from lib.parsing import parse_modality
from lib.separable_spacing import SeparableSpacingd
from lib.uploads import is_upload

from lib.defaults import DEFAULT_CT_WINDOW
MR_PERCENTILES = (0.5, 99.5)


def display_name(path) -> str:
    """How to name an image in a message: its file name, or "the uploaded file" for MONAI Label's temporary uploads."""
    if is_upload(path):
        return "the uploaded file"
    return f"'{os.path.basename(os.path.realpath(str(path)))}'"


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or err.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SafeLoadImaged(LoadImaged):
    """``LoadImaged`` whose failures (corrupt, truncated, empty or unknown files) become ``UnreadableImageError``
    (``ImageNotFoundError`` for a path that does not exist).

    ``compact=True``: integer volumes keep their stored dtype and float64 ones become float32 (every later
    step resamples to float32 anyway); otherwise ``LoadImaged``'s ``dtype`` applies.
    """

    def __init__(self, *args, compact: bool = False, **kwargs):
        if compact:
            kwargs["dtype"] = None
        super().__init__(*args, **kwargs)
        self.compact = compact

    def __call__(self, data, reader=None):
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if isinstance(path, (str, os.PathLike)):
                p = str(path)
                if not os.path.exists(p):
                    raise ImageNotFoundError(f"image {display_name(p)} does not exist")
                if os.path.isfile(p) and os.path.getsize(p) == 0:
                    raise UnreadableImageError(f"image {display_name(p)} is empty (0 bytes)")
                if os.path.isdir(p) and not any(os.scandir(p)):
                    raise UnreadableImageError(f"image folder {display_name(p)} is empty (no DICOM files)")
        try:
            out = super().__call__(data, reader)
            if self.compact:
                for key in self.key_iterator(out):
                    if torch.is_tensor(out[key]) and out[key].dtype == torch.float64:
                        out[key] = out[key].to(torch.float32)
            return out
        except (ImageNotFoundError, UnreadableImageError):
            raise
        except Exception as e:  # nibabel / ITK / zlib / EOF errors for corrupt or truncated files
            name = display_name(data.get(self.keys[0], ""))
            raise UnreadableImageError(
                f"could not read {name} as a NIfTI, NRRD or DICOM volume "
                f"(is the file complete and uncorrupted?): {_short(e)}"
            ) from e


class CheckImaged(MapTransform):
    """Reject what cannot be segmented: not 3D, several channels/time points, empty, NaN or infinite voxels.

    Runs after ``EnsureChannelFirstd`` (shape ``[C, *spatial]``).  Raises ``UnusableImageError``.
    """

    def __init__(self, keys="image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            shape = tuple(int(s) for s in img.shape)
            spatial = shape[1:]
            if any(s == 0 for s in shape):
                raise UnusableImageError(f"{key} is empty: it has no voxels (shape {list(shape)})")
            if len(spatial) != 3:
                kind = "2D" if len(spatial) <= 2 else f"{len(spatial)}D"
                raise UnusableImageError(
                    f"{key} is {kind} (shape {list(shape[1:]) if len(spatial) <= 2 else list(shape)}); "
                    "RefSAM3D segments 3D volumes: send one 3D CT or MR volume"
                )
            if shape[0] != 1:
                raise UnusableImageError(
                    f"{key} has {shape[0]} channels or time points (shape {list(shape)}), i.e. it is 4D; "
                    "send a single 3D volume (one channel)"
                )
            if any(s == 0 for s in spatial):
                raise UnusableImageError(f"{key} is empty (shape {list(spatial)} has no voxels)")
            if sum(s < 2 for s in spatial) > 0:
                raise UnusableImageError(
                    f"{key} has shape {list(spatial)}: a single slice is a 2D image; "
                    "RefSAM3D needs a 3D volume with at least 2 voxels along every axis"
                )
            arr = img if torch.is_tensor(img) else torch.as_tensor(np.asarray(img))
            if arr.is_floating_point():
                finite = torch.isfinite(arr)
                if not bool(finite.all()):
                    bad = int((~finite).sum())
                    raise UnusableImageError(
                        f"{key} contains {bad} NaN or infinite voxel(s) out of {arr.numel()}; "
                        "fix or mask them before segmenting"
                    )
        return d


def intensity_transform(modality: str, keys: Sequence[str] | str = ("image",), ct_window=None):
    """CT: HU window -> [0, 1] clipped; MR: percentiles 0.5-99.5 -> [0, 1] clipped."""
    try:
        modality = parse_modality(modality)
    except ValueError as e:
        raise ValueError(f"modality {e}") from None
    if modality == "MR":
        return ScaleIntensityRangePercentilesd(
            keys=keys, lower=MR_PERCENTILES[0], upper=MR_PERCENTILES[1], b_min=0.0, b_max=1.0, clip=True
        )
    low, high = ct_window if ct_window is not None else DEFAULT_CT_WINDOW
    return ScaleIntensityRanged(keys=keys, a_min=float(low), a_max=float(high), b_min=0.0, b_max=1.0, clip=True)


def load_transforms(
    modality: str,
    target_spacing: Sequence[float],
    keys: Sequence[str] = ("image",),
    label_key: str | None = None,
    ct_window=None,
) -> list:
    """Load -> channel first -> check -> RAS -> resample to ``target_spacing`` -> intensity -> float32.

    ``keys`` are image keys (bilinear resampling, intensity normalised); ``label_key`` (optional) is
    resampled with nearest neighbour and left as integer values.
    """
    image_keys = [keys] if isinstance(keys, str) else list(keys)
    all_keys = image_keys + ([label_key] if label_key else [])
    modes = ["bilinear"] * len(image_keys) + (["nearest"] if label_key else [])
    return [
        SafeLoadImaged(keys=all_keys, image_only=True, compact=True),
        EnsureChannelFirstd(keys=all_keys),
        CheckImaged(keys=image_keys),
        Orientationd(keys=all_keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        SeparableSpacingd(keys=all_keys, pixdim=tuple(float(s) for s in target_spacing), mode=modes),
        intensity_transform(modality, image_keys, ct_window),
        EnsureTyped(keys=image_keys, dtype=torch.float32),
    ]
