"""DICOMweb: a real Orthanc (Debian packages ``orthanc`` + ``orthanc-dicomweb``) on 127.0.0.1 serves the
TCIA brain MRI DICOM series; the app runs with
``--studies http://127.0.0.1:<port>/dicom-web`` and segments the series by its SeriesInstanceUID, as OHIF asks.
Offline, MONAI Label's dcmqi download fails: the server must still start and write DICOM-SEG with pydicom-seg."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
from app_fixtures import infer, parse_all, read_volume
from conftest import require
from orthanc_process import OrthancServer, orthanc_missing
from server_process import MonaiLabelServer


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    require(orthanc_missing() is None, orthanc_missing() or "")
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server.url


@pytest.fixture(scope="module")
def stored_series(orthanc, shared_data):
    """The TCIA brain MRI series (proper UIDs, uncompressed) stored in Orthanc as is: (SeriesInstanceUID, folder).

    (The TotalSegmentator CT series is JPEG 2000 without UIDs, which Orthanc 1.10 cannot transcode for WADO-RS.)"""
    import pydicom

    folder = shared_data / "tcia-brain-mri-dicom" / "12-T1post-05670"
    require(folder.is_dir(), f"{folder} is absent")
    series = None
    for f in sorted(folder.iterdir()):
        series = str(pydicom.dcmread(str(f), stop_before_pixels=True).SeriesInstanceUID)
        r = requests.post(f"{orthanc}/instances", data=f.read_bytes(), timeout=60)
        assert r.status_code == 200, r.text
    return series, folder


def series_geometry(folder):
    """(shape, RAS affine) of a DICOM series read by SimpleITK (independent of MONAI)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    return tuple(img.GetSize()), np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS


@pytest.fixture(scope="module")
def dicomweb_server(orthanc, stored_series, tmp_path_factory, tiny_text_encoder, test_label_set_path):
    root = tmp_path_factory.mktemp("app-dicomweb")
    conf = {"preset": "small", "label_set": str(test_label_set_path), "text_encoder": str(tiny_text_encoder),
            "use_pretrained_model": "false", "model_dir": str(root / "model")}
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(root / "cache"),
           "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": "MR"})}
    with MonaiLabelServer(f"{orthanc}/dicom-web", conf, root / "server.log", env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def test_label_set_path(tmp_path_factory):
    from app_fixtures import write_label_set

    return write_label_set(tmp_path_factory.mktemp("labelset") / "test_abdomen.json")


def test_segments_a_dicomweb_series_by_its_uid(dicomweb_server, stored_series):
    series, folder = stored_series
    res = infer(dicomweb_server.url, series, {"text_prompt": "brain", "modality": "MR", "threshold": 0.05,
                                              "result_extension": ".nii.gz"}, output="all")
    assert res.status_code == 200, f"{res.status_code} {res.text[:500]}\n{dicomweb_server.log()[-3000:]}"
    params, image, name = parse_all(res)
    assert params["label_names"] == {"brain": 255}  # free text: the value /info declares as "free text prompt"
    arr, affine = read_volume(image, name)
    shape, ref_affine = series_geometry(folder)
    assert arr.shape == shape == (512, 512, 22)
    np.testing.assert_allclose(affine, ref_affine, atol=1e-2)
    datastore = requests.get(f"{dicomweb_server.url}/datastore/", params={"output": "all"}, timeout=120).json()
    assert series in datastore["objects"]  # fetched from Orthanc into MONAI Label's DICOMweb cache

    missing = infer(dicomweb_server.url, "1.2.3.4.5.6.7.8.9", {"text_prompt": "liver"})
    assert 400 <= missing.status_code < 500, missing.text
    assert requests.get(f"{dicomweb_server.url}/info/", timeout=60).status_code == 200


def test_dicom_seg_output_offline(dicomweb_server, stored_series, tmp_path):
    """The DICOM-SEG decodes (pydicom-seg): one segment per label in the mask, named from ``label_info``, whose
    frames are exactly the ``output=image`` mask of the same request, on the series' grid."""
    import pydicom
    import pydicom_seg
    import SimpleITK as sitk

    series, folder = stored_series
    info = requests.get(f"{dicomweb_server.url}/info/", timeout=60).json()["models"]["refsam3d"]
    assert any("itkimage2segimage" in w for w in info["warnings"])  # the failed dcmqi download is reported
    # MONAI Label gives label_info[i] to the i-th label value present in the mask (1 = spleen, 5 = liver)
    label_info = [{"name": "spleen", "description": "the spleen", "model_name": "refsam3d"},
                  {"name": "liver", "description": "the liver", "model_name": "refsam3d"}]
    params = {"label_prompt": [5, 1], "modality": "MR", "threshold": 0.05, "label_info": label_info,
              "result_extension": ".nii.gz"}
    image = infer(dicomweb_server.url, series, params, output="image")
    assert image.status_code == 200, f"{image.status_code} {image.text[:500]}\n{dicomweb_server.log()[-3000:]}"
    mask, _ = read_volume(image.content, "mask.nii.gz")
    assert set(np.unique(mask).tolist()) == {0, 1, 5}, "both labels must be in the mask for this check"

    res = infer(dicomweb_server.url, series, params, output="dicom_seg")
    assert res.status_code == 200, f"{res.status_code} {res.text[:500]}\n{dicomweb_server.log()[-3000:]}"
    path = tmp_path / "seg.dcm"
    path.write_bytes(res.content)
    ds = pydicom.dcmread(str(path))
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    segments = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert sorted(segments) == [1, 5]
    assert segments[1].SegmentLabel == "spleen" and segments[5].SegmentLabel == "liver"
    assert segments[5].SegmentDescription == "the liver"

    seg = pydicom_seg.SegmentReader().read(ds)
    assert sorted(seg.available_segments) == [1, 5]
    ref = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    for number in (1, 5):
        frames = seg.segment_image(number)
        assert frames.GetSize() == ref.GetSize() == mask.shape
        np.testing.assert_allclose(frames.GetOrigin(), ref.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(frames.GetDirection(), ref.GetDirection(), atol=1e-5)
        np.testing.assert_allclose(frames.GetSpacing(), ref.GetSpacing(), atol=1e-4)
        decoded = sitk.GetArrayFromImage(frames).transpose(2, 1, 0).astype(bool)  # (z, y, x) -> (x, y, z)
        assert decoded.any()
        np.testing.assert_array_equal(decoded, mask == number)
