"""The app over HTTP against a real ``monailabel start_server`` (small preset, tiny local text encoder, offline).

One server for the whole module; studies are copies of the TotalSegmentator example CT, its DICOM series and two
MSD hippocampus cases.  The label set is a 4-label TotalSegmentator subset (``--conf label_set <file>``).
"""

from __future__ import annotations

import os
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import requests
from app_fixtures import (
    TEST_LABEL_SET,
    build_studies,
    infer,
    parse_all,
    read_nrrd,
    read_volume,
    small_server_conf,
)
from server_process import MonaiLabelServer

LABELS = {e["name"]: e["index"] for e in TEST_LABEL_SET["labels"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory, totalseg_dir, hippocampus_dir, tiny_text_encoder):
    root = tmp_path_factory.mktemp("app-server")
    studies = build_studies(root / "studies", totalseg_dir, hippocampus_dir)
    conf = small_server_conf(root, tiny_text_encoder)
    srv = MonaiLabelServer(studies, conf, root / "server.log")
    srv.start()
    srv.root, srv.studies_dir, srv.model_dir = root, studies, root / "model"
    yield srv
    srv.stop()


def _ok(response: requests.Response, server) -> requests.Response:
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}\nlog:\n{server.log()[-3000:]}"
    return response


def _geometry(path):
    img = nib.load(str(path))
    return tuple(img.shape), img.affine


# ---------------------------------------------------------------------------------------------------- /info
def test_info_lists_model_labels_and_text_prompt_option(server):
    info = _ok(requests.get(f"{server.url}/info/", timeout=60), server).json()
    model = info["models"]["refsam3d"]
    assert model["type"] == "segmentation"  # OHIF (auto-segmentation, class prompts) and Slicer list it
    assert model["labels"] == {**LABELS, "free text prompt": 255}  # free text is shown under its own name
    assert model["config"]["text_prompt"] == ""  # a text field in the viewers' options dialogs
    assert model["label_set"] == "test_abdomen"
    assert model["prompts"]["aorta"] == "CT images, abdominal organ segmentation, aorta"
    assert info["labels"] == ["spleen", "kidney_right", "liver", "aorta", "free text prompt"]
    # offline and untrained: said plainly in /info and in the log
    assert "meaningless until the train task publishes weights" in model["description"]
    assert any("no trained RefSAM3D weights" in w for w in model["warnings"])
    assert "no trained RefSAM3D weights" in server.log()


def test_result_writer_is_loaded_at_start_up(server):
    """ITK loads lazily (~2 s on the first write of a process): the background preload writes once at start-up."""
    deadline = time.time() + 120
    while "result writer (ITK) loaded" not in server.log() and time.time() < deadline:
        time.sleep(0.5)
    assert "result writer (ITK) loaded" in server.log()


# ---------------------------------------------------------------------------------------------------- prompts
def test_text_prompt_gives_one_mask_named_by_the_prompt(server):
    res = _ok(infer(server.url, "example_ct_sm", {"text_prompt": "  the liver  "}), server).json()
    assert res["label_names"] == {"the liver": 255}  # not the whole label set (BasicInferTask overwrites it)
    assert res["prompt_mode"] == "text"
    assert set(res["voxels"]) == {"the liver"}
    assert res["model"]["preset"] == "small" and res["model"]["trained"] is False


def test_nrrd_uint8_as_ohif_and_slicer_ask_with_input_geometry(server):
    params = {"text_prompt": "spleen", "result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False,
              "threshold": 0.05}
    res = _ok(infer(server.url, "example_ct_sm", params, output="image"), server)
    assert res.headers["content-type"].startswith("application/octet-stream")
    path = server.root / "spleen.nrrd"
    path.write_bytes(res.content)
    arr, affine = read_nrrd(str(path))
    shape, ref_affine = _geometry(server.studies_dir / "example_ct_sm.nii.gz")
    assert arr.dtype == np.uint8
    assert arr.shape == shape
    np.testing.assert_allclose(affine, ref_affine, atol=1e-3)
    assert set(np.unique(arr).tolist()) <= {0, 1} and arr.max() == 1  # spleen = 1; low threshold: not empty


@pytest.mark.parametrize("extension", [".seg.nrrd", ".nrrd", ".nii.gz"])
def test_uint16_label_map_in_the_formats_viewers_ask_for(server, extension, tmp_path):
    """OHIF asks for ``.seg.nrrd`` / ``uint16``: the file reads back with the input's grid and the label values."""
    params = {"label_prompt": [52, 1, 5], "result_extension": extension, "result_dtype": "uint16", "threshold": 0.05}
    res = _ok(infer(server.url, "example_ct_sm", params, output="image"), server)
    path = tmp_path / f"labels{extension}"
    path.write_bytes(res.content)
    if extension.endswith(".nrrd"):
        arr, affine = read_nrrd(str(path))
    else:
        img = nib.load(str(path))
        arr, affine = np.asanyarray(img.dataobj), img.affine
        assert img.get_data_dtype() == np.uint16
    assert arr.dtype == np.uint16
    shape, ref_affine = _geometry(server.studies_dir / "example_ct_sm.nii.gz")
    assert arr.shape == shape
    np.testing.assert_allclose(affine, ref_affine, atol=1e-3)
    values = set(np.unique(arr).tolist()) - {0}
    assert values and values <= {52, 1, 5}


def test_label_prompt_uses_label_indices_and_label_names_match_mask(server):
    res = _ok(infer(server.url, "example_ct_sm", {"label_prompt": [52, 1], "threshold": 0.05}, output="all"), server)
    params, image, name = parse_all(res)
    assert params["label_names"] == {"aorta": 52, "spleen": 1}
    assert params["prompt_mode"] == "labels"
    arr, affine = read_volume(image, name)
    values = set(np.unique(arr).tolist()) - {0}
    assert values and values <= {1, 52}
    assert {params["label_names"][n] for n, v in params["voxels"].items() if v > 0} == values


def test_label_prompt_as_names_and_strings(server):
    res = _ok(infer(server.url, "example_ct_sm", {"label_prompt": "liver, 2"}), server).json()
    assert res["label_names"] == {"liver": 5, "kidney_right": 2}


def test_text_prompt_and_label_prompt_are_both_answered(server):
    res = _ok(infer(server.url, "example_ct_sm", {"text_prompt": "pancreas", "label_prompt": [1]}), server).json()
    assert res["label_names"] == {"pancreas": 255, "spleen": 1}  # both answered (test_app_viewer_state.py)


def test_no_prompt_segments_every_label_as_one_multilabel_map(server):
    # Slicer sends every option of the task: an untouched text field arrives as "" and means "no free text"
    params = {"text_prompt": "", "threshold": 0.05, "result_extension": ".nii.gz"}
    params_out, image, name = parse_all(_ok(infer(server.url, "example_ct_sm", params, output="all"), server))
    assert params_out["prompt_mode"] == "auto"
    assert params_out["label_names"] == LABELS
    arr, affine = read_volume(image, name)
    shape, ref_affine = _geometry(server.studies_dir / "example_ct_sm.nii.gz")
    assert arr.shape == shape
    np.testing.assert_allclose(affine, ref_affine, atol=1e-3)
    values = set(np.unique(arr).tolist()) - {0}
    assert values and values <= set(LABELS.values())
    assert {LABELS[n] for n, v in params_out["voxels"].items() if v > 0} == values
    counts = np.bincount(arr.astype(np.int64).ravel(), minlength=max(LABELS.values()) + 1)
    assert params_out["voxels"] == {n: int(counts[v]) for n, v in LABELS.items()}  # counted on the written mask


# ---------------------------------------------------------------------------------------------------- inputs
def test_dicom_series_folder_as_input(server, totalseg_dir):
    params, image, name = parse_all(_ok(infer(server.url, "ct_dicom", {"text_prompt": "liver", "threshold": 0.05},
                                              output="all"), server))
    assert name.endswith(".nii.gz")
    arr, affine = read_volume(image, name)
    # same voxel grid in world space as TotalSegmentator's segmentation of this series (which stores it y-flipped)
    ours = nib.as_closest_canonical(nib.Nifti1Image(arr, affine))
    ref = nib.as_closest_canonical(nib.load(str(totalseg_dir / "example_seg_dicom.nii.gz")))
    assert arr.shape == (512, 512, 20) and ours.shape == ref.shape
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-2)
    assert params["label_names"] == {"liver": 5} and arr.max() == 5  # a label of the set: its own value


def test_uploaded_mr_volume_keeps_its_geometry(server, hippocampus_dir):
    src = hippocampus_dir / "imagesTr" / "hippocampus_007.nii.gz"
    res = _ok(infer(server.url, None, {"text_prompt": "hippocampus", "modality": "MR", "threshold": 0.05,
                                       "result_extension": ".nii.gz"}, output="image", file=src), server)
    arr, affine = read_volume(res.content, "result.nii.gz")
    shape, ref_affine = _geometry(src)
    assert arr.shape == shape
    np.testing.assert_allclose(affine, ref_affine, atol=1e-3)


def test_monailabel_client_as_slicer_uses_it(server, tmp_path):
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    assert "refsam3d" in client.info()["models"]
    params = {"label_prompt": [5], "result_extension": ".nrrd", "result_dtype": "uint8", "threshold": 0.05}
    image_out, result = client.infer("refsam3d", "example_ct_sm", params)
    assert result["label_names"] == {"liver": 5}
    arr, _ = read_nrrd(image_out)
    assert arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= {0, 5}

    # save it as the final label of the study (what "Submit Label" does)
    client.save_label("example_ct_sm", image_out, tag="final")
    datastore = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()
    assert "final" in datastore["objects"]["example_ct_sm"]["labels"]
    assert any(p.name.startswith("example_ct_sm") for p in (server.studies_dir / "labels" / "final").iterdir())


# ---------------------------------------------------------------------------------------------------- encoding cache
def test_concurrent_requests_on_one_study_encode_it_once(server):
    results = {}

    def run(i):
        results[i] = infer(server.url, "hippocampus_004", {"text_prompt": "left hippocampus", "modality": "MR",
                                                            "threshold": 0.05}, output="all")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parsed = [parse_all(_ok(results[i], server)) for i in range(2)]
    assert sorted(p[0]["cache"]["encoding"] for p in parsed) == ["hit", "miss"]
    assert sorted(p[0]["cache"]["image"] for p in parsed) == ["hit", "miss"]
    a, _ = read_volume(parsed[0][1], parsed[0][2])
    b, _ = read_volume(parsed[1][1], parsed[1][2])
    np.testing.assert_array_equal(a, b)  # the cached encoding gives exactly the masks of a fresh one

    other = _ok(infer(server.url, "hippocampus_004", {"text_prompt": "right hippocampus", "modality": "MR"}), server).json()
    assert other["cache"] == {"image": "hit", "encoding": "hit"}  # another prompt, same study: no new encoding


def test_a_study_edited_on_disk_is_read_and_encoded_again(server):
    path = server.studies_dir / "hippocampus_006.nii.gz"
    params = {"text_prompt": "hippocampus", "modality": "MR", "threshold": 0.05}
    _ok(infer(server.url, "hippocampus_006", params), server)
    assert _ok(infer(server.url, "hippocampus_006", params), server).json()["cache"] == {"image": "hit", "encoding": "hit"}
    img = nib.load(str(path))
    edited = np.ascontiguousarray(np.asanyarray(img.dataobj)[::-1])  # same size and header, other voxels
    nib.save(nib.Nifti1Image(edited, img.affine, img.header), str(path))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later modification time, whatever the clock
    assert _ok(infer(server.url, "hippocampus_006", params), server).json()["cache"] == {"image": "miss",
                                                                                      "encoding": "miss"}


def test_info_reports_the_cache(server):
    before = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refsam3d"]["cache"]
    _ok(infer(server.url, "example_ct_sm", {"text_prompt": "kidney", "threshold": 0.05}), server)  # image + encoding
    cache = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refsam3d"]["cache"]
    assert cache["entries"] >= 2 and 0 < cache["bytes"] <= cache["max_bytes"]
    assert cache["hits"] + cache["misses"] > before["hits"] + before["misses"]


# ---------------------------------------------------------------------------------------------------- bad input
def _make_bad_files(folder):
    folder.mkdir(exist_ok=True)
    a = np.eye(4)
    files = {}
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.float32), a), folder / "flat2d.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20, 3), np.float32), a), folder / "time4d.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((0, 20, 20), np.float32), a), folder / "empty.nii.gz")
    nan = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, a), folder / "nan.nii.gz")
    good = np.random.default_rng(0).integers(-1000, 1000, (40, 40, 40)).astype(np.int16)
    nib.save(nib.Nifti1Image(good, a), folder / "good.nii.gz")
    data = (folder / "good.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (folder / "garbage.nii.gz").write_bytes(b"this is not an image" * 20)
    (folder / "zero.nii.gz").write_bytes(b"")
    for name in ("flat2d", "time4d", "empty", "nan", "truncated", "garbage", "zero"):
        files[name] = folder / f"{name}.nii.gz"
    return files


BAD_REQUESTS = {
    # name: (model, image, params, output, upload, expected status, words in the message)
    "unknown_model": ("nope", "example_ct_sm", {"text_prompt": "liver"}, "json", None, 404, "unknown model"),
    "image_not_in_datastore": ("refsam3d", "no_such_image", {}, "json", None, 404, "not in the datastore"),
    "path_outside_studies": ("refsam3d", "/etc/hostname", {}, "json", None, 403, "outside the studies"),
    "relative_path_outside": ("refsam3d", "../../../../etc/passwd", {}, "json", None, 403, "outside the studies"),
    "truncated_upload": ("refsam3d", None, {"text_prompt": "liver"}, "json", "truncated", 400, "could not read"),
    "corrupt_upload": ("refsam3d", None, {"text_prompt": "liver"}, "json", "garbage", 400, "could not read"),
    "zero_byte_upload": ("refsam3d", None, {"text_prompt": "liver"}, "json", "zero", 400, "empty"),
    "image_2d": ("refsam3d", None, {"text_prompt": "liver"}, "json", "flat2d", 422, "2D"),
    "image_4d": ("refsam3d", None, {"text_prompt": "liver"}, "json", "time4d", 422, "4D"),
    "empty_volume": ("refsam3d", None, {"text_prompt": "liver"}, "json", "empty", 422, "no voxels"),
    "nan_voxels": ("refsam3d", None, {"text_prompt": "liver"}, "json", "nan", 422, "NaN"),
    "blank_text_prompt": ("refsam3d", "example_ct_sm", {"text_prompt": "   "}, "json", None, 422, "text_prompt is empty"),
    "punctuation_text_prompt": ("refsam3d", "example_ct_sm", {"text_prompt": "?!"}, "json", None, 422, "empty"),
    "overlong_text_prompt": ("refsam3d", "example_ct_sm", {"text_prompt": "liver " * 200}, "json", None, 422,
                             "characters long"),
    "text_prompt_not_string": ("refsam3d", "example_ct_sm", {"text_prompt": 5}, "json", None, 422, "must be a string"),
    "label_prompt_not_in_set": ("refsam3d", "example_ct_sm", {"label_prompt": [3]}, "json", None, 422,
                                "not in label set"),
    "label_prompt_unknown_name": ("refsam3d", "example_ct_sm", {"label_prompt": ["brain"]}, "json", None, 422,
                                  "not a label"),
    "params_not_json": ("refsam3d", "example_ct_sm", "{text_prompt: liver", "json", None, 400, "not valid JSON"),
    "params_json_not_object": ("refsam3d", "example_ct_sm", "[1, 2, 3]", "json", None, 400, "JSON object"),
    "bad_result_dtype": ("refsam3d", "example_ct_sm", {"result_dtype": "float64"}, "json", None, 422, "result_dtype"),
    "bad_threshold": ("refsam3d", "example_ct_sm", {"threshold": 2}, "json", None, 422, "threshold"),
    "dicom_seg_without_dicomweb": ("refsam3d", "hippocampus_006", {"label_prompt": [1], "modality": "MR"}, "dicom_seg",
                                   None, 400, "DICOMweb"),
    "no_image_at_all": ("refsam3d", None, {"text_prompt": "liver"}, "json", None, 400, "no image"),
}


@pytest.fixture(scope="module")
def bad_files(server):
    return _make_bad_files(server.root / "bad")


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, bad_files, case):
    model, image, params, output, upload, status, words = BAD_REQUESTS[case]
    res = infer(server.url, image, params, output=output, file=bad_files[upload] if upload else None, model=model)
    assert res.status_code == status, f"{case}: {res.status_code} {res.text[:300]}"
    detail = res.json()["detail"]
    assert isinstance(detail, str) and words.lower() in detail.lower(), detail
    assert "Traceback" not in detail
    assert requests.get(f"{server.url}/info/", timeout=60).status_code == 200


def test_still_serves_after_bad_input(server, bad_files):
    res = _ok(infer(server.url, None, {"text_prompt": "liver", "result_extension": ".nii.gz"}, output="image",
                    file=server.root / "bad" / "good.nii.gz"), server)
    arr, _ = read_volume(res.content, "x.nii.gz")
    assert arr.shape == (40, 40, 40)
