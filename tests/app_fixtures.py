"""Helpers for the app tests: a studies folder from the real data, a small label set, HTTP and volume helpers."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import nibabel as nib
import numpy as np
import requests

HIPPOCAMPUS_CASES = ("hippocampus_004", "hippocampus_006", "hippocampus_007")

# A subset of the TotalSegmentator set with its real (non-contiguous) indices, so that automatic segmentation
# stays fast on 2 CPU cores and label values differ from prompt positions.
TEST_LABEL_SET = {
    "name": "test_abdomen",
    "description": "Four TotalSegmentator structures (test subset)",
    "modality": "CT",
    "target_spacing": [3.0, 3.0, 3.0],
    "ct_window": [-1000, 1000],
    "roi_size": {"small": [32, 32, 32], "vit_b": [64, 64, 64]},
    "labels": [
        {"name": "spleen", "index": 1, "prompt": "CT images, abdominal organ segmentation, spleen"},
        {"name": "kidney_right", "index": 2, "prompt": "CT images, abdominal organ segmentation, right kidney"},
        {"name": "liver", "index": 5, "prompt": "CT images, abdominal organ segmentation, liver"},
        {"name": "aorta", "index": 52, "prompt": "CT images, abdominal organ segmentation, aorta"},
    ],
}


def build_studies(dest: Path, totalseg_dir: Path, hippocampus_dir: Path, cases=HIPPOCAMPUS_CASES[:2]) -> Path:
    """Copies (never links: the datastore writes beside them) of the CT, its DICOM series and a few hippocampus cases."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(totalseg_dir / "example_ct_sm.nii.gz", dest / "example_ct_sm.nii.gz")
    shutil.copytree(totalseg_dir / "ct_dicom", dest / "ct_dicom")
    for case in cases:
        shutil.copy(hippocampus_dir / "imagesTr" / f"{case}.nii.gz", dest / f"{case}.nii.gz")
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def hippocampus_studies(root: Path, hippocampus_dir: Path, cases) -> Path:
    """``root/studies`` holding copies (mode 0644) of the given MSD hippocampus cases' images."""
    studies = root / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    for case in cases:
        shutil.copy(hippocampus_dir / "imagesTr" / f"{case}.nii.gz", studies / f"{case}.nii.gz")
        (studies / f"{case}.nii.gz").chmod(0o644)
    return studies


def write_label_set(path: Path, data: Dict[str, Any] = TEST_LABEL_SET) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def small_server_conf(root: Path, text_encoder: Path) -> Dict[str, str]:
    """``--conf`` of an offline test server: small preset, :data:`TEST_LABEL_SET`, weights in ``root/model``."""
    return {
        "preset": "small",
        "label_set": str(write_label_set(root / "test_abdomen.json")),
        "text_encoder": str(text_encoder),
        "use_pretrained_model": "false",
        "model_dir": str(root / "model"),
    }


def infer(url: str, image: Optional[str], params: Dict[str, Any] | str | None = None, output: Optional[str] = "json",
          file: Optional[Path] = None, model: str = "refsam3d", timeout: float = 900) -> requests.Response:
    query = {}
    if image is not None:
        query["image"] = image
    if output is not None:
        query["output"] = output
    data = {"params": params if isinstance(params, str) else json.dumps(params or {})}
    files = {"file": (file.name, open(file, "rb"))} if file is not None else None
    try:
        return requests.post(f"{url}/infer/{model}", params=query, data=data, files=files, timeout=timeout)
    finally:
        if files:
            files["file"][1].close()


def parse_all(response: requests.Response) -> Tuple[Dict[str, Any], bytes, str]:
    """(params json, image bytes, image file name) of an ``output=all`` multipart response."""
    raw = b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" + response.content
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    params, image, name = None, None, ""
    for part in msg.iter_parts():
        disposition = part.get("Content-Disposition", "")
        if 'name="params"' in disposition:
            params = json.loads(part.get_payload(decode=True))
        elif 'name="image"' in disposition:
            image, name = part.get_payload(decode=True), part.get_filename() or ""
    assert params is not None and image is not None, f"unexpected multipart response: {response.content[:300]!r}"
    return params, image, name


def read_volume(data: bytes, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """(array, RAS affine) of a NIfTI or NRRD file given as bytes."""
    suffix = ".nrrd" if name.endswith(".nrrd") else ".nii.gz" if name.endswith(".gz") else ".nii"
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(data)
        f.flush()
        if suffix == ".nrrd":
            return read_nrrd(f.name)
        img = nib.load(f.name)
        return np.asanyarray(img.dataobj), img.affine


def read_nrrd(path: str) -> Tuple[np.ndarray, np.ndarray]:
    import nrrd

    arr, header = nrrd.read(path)
    space = header.get("space", "left-posterior-superior")
    directions = np.asarray(header["space directions"], dtype=float)  # rows: axis vectors
    origin = np.asarray(header["space origin"], dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    affine[:3, 3] = origin
    if space in ("left-posterior-superior", "LPS"):
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    return arr, affine


def nrrd_bytes_header(data: bytes) -> Dict[str, Any]:
    import nrrd

    head = data.split(b"\n\n", 1)[0].decode("ascii", errors="replace") + "\n"
    return nrrd.read_header(io.StringIO(head))
