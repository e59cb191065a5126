"""A KiTS-sized abdominal CT for benchmarks, generated (never stored): 512 x 512 x 1059 voxels at 0.78 x 0.78 x 0.5 mm, int16.

The TotalSegmentator example CT (122 x 101 x 112 at 3 mm, 366 x 303 x 336 mm) is resampled (trilinear) to the
KiTS spacing, centred in a 400 x 400 mm field of air (-1024 HU) and mirrored head-wards and feet-wards to fill
the 530 mm of a long KiTS scan.  The affine is a DICOM-like LPS grid stored as NIfTI (x and y axes negative).

    .venv/bin/python benchmarks/kits_volume.py OUT.nii.gz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

KITS_SHAPE = (512, 512, 1059)
KITS_SPACING = (0.78, 0.78, 0.5)
AIR_HU = -1024


def _resampled_ct(source: Path, spacing) -> np.ndarray:
    """The source CT trilinearly resampled to ``spacing`` (int16 HU), slab by slab to keep memory small."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    img = nib.load(str(source))
    src = np.asarray(img.dataobj, dtype=np.float32)
    src_spacing = np.abs(np.diag(img.affine)[:3])
    shape = [int(round(n * s / t)) for n, s, t in zip(src.shape, src_spacing, spacing)]
    x = torch.from_numpy(src)[None, None]
    out = np.empty(shape, dtype=np.int16)
    y = F.interpolate(x, size=(shape[0], shape[1], src.shape[2]), mode="trilinear", align_corners=True)[0, 0]
    step = 64  # then along z, in slabs of rows
    for a in range(0, shape[0], step):
        part = F.interpolate(y[a : a + step], size=shape[2], mode="linear", align_corners=True)  # rows as batch
        out[a : a + step] = part.round().clamp(-32768, 32767).to(torch.int16).numpy()
    return out


def kits_like_ct(source: Path, out: Path, shape=KITS_SHAPE, spacing=KITS_SPACING) -> Path:
    """Write the KiTS-sized CT to ``out`` (.nii.gz, gzip level 1) and return ``out``."""
    import nibabel as nib

    body = _resampled_ct(source, spacing)
    vol = np.full(shape, AIR_HU, dtype=np.int16)
    xy = [min(b, s) for b, s in zip(body.shape[:2], shape[:2])]
    off = [(s - b) // 2 for b, s in zip(xy, shape[:2])]
    crop = [(b - n) // 2 for b, n in zip(body.shape[:2], xy)]
    body = body[crop[0] : crop[0] + xy[0], crop[1] : crop[1] + xy[1]]
    z = 0
    flip = False
    while z < shape[2]:  # the abdomen, then its mirror image, ... along z
        n = min(body.shape[2], shape[2] - z)
        part = body[:, :, ::-1] if flip else body
        vol[off[0] : off[0] + xy[0], off[1] : off[1] + xy[1], z : z + n] = part[:, :, :n]
        z += n
        flip = not flip
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [spacing[0] * (shape[0] - 1) / 2, spacing[1] * (shape[1] - 1) / 2 + 150.0, -spacing[2] * shape[2] + 100.0]
    img = nib.Nifti1Image(vol, affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    out = Path(out)
    nib.openers.Opener.default_compresslevel = 1
    nib.save(img, str(out))
    return out


if __name__ == "__main__":
    repo = Path(__file__).resolve().parents[1]
    ct = (repo.parent / "shared" / "data" / "totalsegmentator-example" / "example_ct.nii.gz").resolve()
    print(kits_like_ct(ct, Path(sys.argv[1])))
