"""Voxel count of a volume from its header only, to refuse oversized volumes before any array exists.

NIfTI/Analyze through nibabel's header, NRRD through pynrrd's ``read_header``, a DICOM series folder through
pydicom (``stop_before_pixels``: rows x columns x frames of one file, times the files), anything else through
SimpleITK's ``ReadImageInformation``.  ``None`` when the header cannot be read: the normal loader then reports the file.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Optional

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr", ".img.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr", ".seg.nrrd")


def _dicom_voxels(folder: str) -> Optional[int]:
    """Rows x columns x frames of the first readable file, times the number of files (one slice each)."""
    import pydicom

    files = sorted(e.path for e in os.scandir(folder) if e.is_file())
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        if rows and cols:
            return rows * cols * int(getattr(ds, "NumberOfFrames", 1) or 1) * len(files)
    return None


def header_voxels(path: str) -> Optional[int]:
    """Number of voxels (all dimensions, components included) the header of ``path`` declares."""
    name = os.path.basename(path).lower()
    try:
        if os.path.isdir(path):
            return _dicom_voxels(path)
        if name.endswith(NIFTI_SUFFIXES):
            import nibabel as nib

            return math.prod(int(d) for d in nib.load(path).header.get_data_shape())
        if name.endswith(NRRD_SUFFIXES):
            import nrrd

            return math.prod(int(d) for d in nrrd.read_header(path)["sizes"])
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        return math.prod(reader.GetSize()) * reader.GetNumberOfComponents()
    except Exception as e:  # unreadable header: the loader answers with its own clear error
        logger.info(f"header of {name} not readable for the voxel limit: {type(e).__name__}: {str(e)[:200]}")
        return None


def oversized_message(path: str, max_voxels: int, shown_name: str) -> Optional[str]:
    """A readable refusal when the header of ``path`` claims more than ``max_voxels`` voxels, else None."""
    voxels = header_voxels(path)
    if voxels is None or voxels <= max_voxels:
        return None
    return (f"{shown_name} declares {voxels:,} voxels, more than this server accepts ({max_voxels:,}, "
            "--conf max_voxels); crop or downsample the volume")


def check_volume_size(image: Any, max_voxels: int, datastore: Any) -> None:
    """Raise ``Unprocessable`` when the request's image (path or datastore id) declares too many voxels."""
    from lib.errors import Unprocessable
    from lib.transforms import display_name

    if not isinstance(image, str):
        return
    path = image if os.path.exists(image) else None
    if path is None:
        try:
            path = datastore.get_image_uri(image)
        except Exception:
            return  # the request check has reported unknown ids already
    if path and os.path.exists(path):
        message = oversized_message(path, max_voxels, display_name(path))
        if message:
            raise Unprocessable(message)
