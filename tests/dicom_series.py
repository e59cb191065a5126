"""A NIfTI volume written as a DICOM MR series with pydicom (one uint16 slice per file, rescaled, LPS geometry).

Used to put the MSD hippocampus cases, which the shipped checkpoint was trained for, into a real PACS."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import nibabel as nib
import numpy as np


@dataclass
class DicomSeries:
    study_uid: str
    series_uid: str
    patient_name: str
    shape: tuple  # (columns, rows, slices): the NIfTI array's shape
    files: List[bytes] = field(repr=False, default_factory=list)


def nifti_to_dicom_series(path: Path, patient_name: str, series_description: str = "T1 MRI") -> DicomSeries:
    """Slices along the NIfTI's third axis; pixel (row r, column c) of slice k is voxel (c, r, k)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    img = nib.as_closest_canonical(nib.load(str(path)))
    vol = np.asarray(img.dataobj, dtype=np.float64)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    lo, hi = float(vol.min()), float(vol.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((vol - lo) / slope).astype(np.uint16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    orientation = list(lps[:3, 0] / spacing[0]) + list(lps[:3, 1] / spacing[1])
    out = DicomSeries(study, series, patient_name, vol.shape)
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.Modality = patient_name, patient_name, "MR"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.StudyDescription = "", f"{patient_name} study"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = series_description, 1, k + 1
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = ds.SpacingBetweenSlices = float(spacing[2])
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{lo:.10g}"
        ds.WindowCenter, ds.WindowWidth = f"{(lo + hi) / 2:.6g}", f"{hi - lo:.6g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        buf = io.BytesIO()
        ds.save_as(buf, write_like_original=False)
        out.files.append(buf.getvalue())
    return out
