"""DICOM-SEG without the dcmqi binary.

MONAI Label 0.8.5 writes DICOM-SEG (``/infer?output=dicom_seg`` and saving a final label to a DICOMweb
datastore) with dcmqi's ``itkimage2segimage`` command, which it downloads from GitHub when the datastore is
created -- and a failed download aborts the server start.  The app catches that failure (see ``main.py``) and,
when the command is not available, routes MONAI Label's ``nifti_to_dicom_seg`` to its own pydicom-seg writer
(``use_itk=False``), so DICOM-SEG works offline too.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

logger = logging.getLogger(__name__)

DCMQI_TOOL = "itkimage2segimage"


def dcmqi_available(app_dir: str) -> bool:
    return bool(shutil.which(DCMQI_TOOL)) or os.path.exists(os.path.join(app_dir, "bin", DCMQI_TOOL))


def install_dicom_seg_fallback(app_dir: str) -> bool:
    """Use pydicom-seg for DICOM-SEG when dcmqi's ``itkimage2segimage`` is missing; True if installed."""
    if dcmqi_available(app_dir):
        return False
    from monailabel.datastore.utils import convert

    original = convert.nifti_to_dicom_seg

    def nifti_to_dicom_seg(series_dir, label, label_info, file_ext="*", use_itk=True):
        return original(series_dir, label, label_info, file_ext=file_ext, use_itk=False)

    nifti_to_dicom_seg.__wrapped__ = original  # type: ignore[attr-defined]
    for name in ("monailabel.endpoints.infer", "monailabel.datastore.dicom"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "nifti_to_dicom_seg"):
            module.nifti_to_dicom_seg = nifti_to_dicom_seg
    logger.info(f"RefSAM3D: dcmqi's {DCMQI_TOOL} is not available; DICOM-SEG is written with pydicom-seg")
    return True
