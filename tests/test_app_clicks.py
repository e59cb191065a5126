"""Clicks over HTTP against a real ``monailabel start_server``: the request bodies OHIF v3 (Point Prompts, model type
``vista3d``) and 3D Slicer (Deepgrow, type ``deepgrow``) send, bad clicks -> 422, decoder-only reruns, and the
refinement itself on the shipped MSD hippocampus checkpoint (``checkpoints/msd_hippocampus/refsam3d_small.pt``).

``test_clicks_fix_the_errors_of_the_text_answer`` needs weights trained with clicks (the retrained checkpoint);
the checkpoint shipped before issue 20 has an untrained click encoder, and that test fails on it by design.
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import requests
from app_fixtures import hippocampus_studies, infer, parse_all, read_volume
from scipy import ndimage
from server_process import REPO_ROOT, MonaiLabelServer

CHECKPOINT = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
SPLIT = REPO_ROOT / "benchmarks" / "results" / "hippocampus_split.json"
CASES = json.loads(SPLIT.read_text())["test"][:2]  # held-out cases of the checkpoint's split
OHIF_EXTRAS = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False, "restore_label_idx": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory, hippocampus_dir, minilm_text_encoder):
    root = tmp_path_factory.mktemp("clicks")
    studies = hippocampus_studies(root, hippocampus_dir, CASES)
    (root / "model").mkdir()
    shutil.copy(CHECKPOINT, root / "model" / "refsam3d_small.pt")
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": "minilm",
            "use_pretrained_model": "false", "model_dir": str(root / "model")}
    with MonaiLabelServer(studies, conf, root / "server.log") as srv:
        yield srv


def _truth(hippocampus_dir, case: str) -> np.ndarray:
    return np.asanyarray(nib.load(str(hippocampus_dir / "labelsTr" / f"{case}.nii.gz")).dataobj).astype(np.int32)


def _interior(region: np.ndarray) -> list:
    """The voxel of ``region`` farthest from its boundary (as the issue's annotator simulation clicks)."""
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
    return [int(c) for c in np.unravel_index(int(np.argmax(dist)), region.shape)]


def _all(server, model: str, case: str, params: dict):
    r = infer(server.url, case, params, output="all", model=model)
    assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}\n{server.log()[-3000:]}"
    meta, data, name = parse_all(r)
    mask, _ = read_volume(data, name)
    return meta, mask


def test_info_declares_a_task_per_viewer_tool(server):
    models = requests.get(f"{server.url}/info/", timeout=60).json()["models"]
    assert {m: models[m]["type"] for m in ("refsam3d", "refsam3d_clicks", "refsam3d_deepgrow")} == {
        "refsam3d": "segmentation", "refsam3d_clicks": "vista3d", "refsam3d_deepgrow": "deepgrow"}
    assert models["refsam3d_clicks"]["labels"] == models["refsam3d"]["labels"] == {
        "anterior hippocampus": 1, "posterior hippocampus": 2, "free text prompt": 255}
    assert models["refsam3d_deepgrow"]["config"]["clicks_only"] is False


def test_ohif_point_prompts_body(server, hippocampus_dir):
    case = CASES[0]
    truth = _truth(hippocampus_dir, case)
    fg, bg = _interior(truth == 2), _interior(truth == 0)
    # PointPrompts.tsx, type vista3d: the segment's clicks, then background ones; label_prompt = its /info index
    params = {"text_prompt": "", "threshold": 0.5, "clicks_only": False, **OHIF_EXTRAS,
              "points": [fg, bg], "point_labels": [1, 0], "label_prompt": [2]}
    meta, mask = _all(server, "refsam3d_clicks", case, params)
    assert mask.shape == truth.shape and set(np.unique(mask).tolist()) <= {0, 2} and (mask == 2).any()
    assert meta["label_names"] == {"posterior hippocampus": 2} and meta["prompt_mode"] == "text+clicks"
    assert meta["clicks"]["count"] == 2 and meta["clicks"]["positive"] == 1 and meta["clicks"]["used"] == 2
    # the free-text segment with no text: clicks only ("segment what I clicked"), written with 255
    meta, mask = _all(server, "refsam3d_clicks", case, {**params, "label_prompt": [255]})
    assert meta["prompt_mode"] == "clicks" and meta["label_names"] == {"free text prompt": 255}
    assert set(np.unique(mask).tolist()) <= {0, 255}


def test_slicer_deepgrow_body(server, hippocampus_dir):
    case = CASES[1]
    truth = _truth(hippocampus_dir, case)
    # MONAILabel.py onClickDeepgrow: label, foreground, background + every config option; logic.infer adds these two
    params = {"label": "anterior hippocampus", "foreground": [_interior(truth == 1)], "background": [],
              "text_prompt": "", "threshold": 0.5, "clicks_only": False, "result_extension": ".nrrd", "result_dtype": "uint8"}
    meta, mask = _all(server, "refsam3d_deepgrow", case, params)
    assert set(np.unique(mask).tolist()) <= {0, 1} and (mask == 1).any()
    assert meta["label_names"] == {"anterior hippocampus": 1} and meta["prompt_mode"] == "text+clicks"
    meta, mask = _all(server, "refsam3d_deepgrow", case, {**params, "label": "Segment_1"})  # Slicer's default name
    assert meta["label_names"] == {"Segment_1": 255} and meta["prompt_mode"] == "clicks"


def test_a_click_reruns_the_decoder_only(server, hippocampus_dir):
    case = CASES[0]
    text = infer(server.url, case, {"text_prompt": "anterior hippocampus"})
    assert text.status_code == 200, text.text[:300]
    truth = _truth(hippocampus_dir, case)
    meta, _ = _all(server, "refsam3d_clicks", case, {"points": [_interior(truth == 1)], "point_labels": [1],
                                                      "label_prompt": [1], **OHIF_EXTRAS})
    clicks = meta["clicks"]
    assert meta["cache"]["encoding"] == "hit" and clicks["windows"]["encoded"] == 0  # no encoder run
    assert clicks["text_answer"] == "cached" and 1 <= clicks["windows"]["decoded"] <= clicks["windows"]["total"]
    assert clicks["previous_mask"] in ("text answer", "last answer")
    assert meta["model"]["mirror_axes"] == [0]  # decoded as the text answer is: a plain and a mirrored pass


@pytest.mark.parametrize("params,message", [
    ({"points": [[1, "x", 2]], "point_labels": [1]}, "finite numbers"),
    ({"points": [[1, 2, 3], [3, 4, 5]], "point_labels": [1]}, "point_labels has 1"),
    ({"points": [[1, 2, 3]] * 65, "point_labels": [1] * 65}, "at most 64"),
    ({"points": [[1, 2, 3000]], "point_labels": [1]}, "outside the image"),
    ({"foreground": [[-5, 2, 3]], "background": []}, "outside the image"),
])
def test_bad_clicks_are_422_and_the_server_keeps_serving(server, params, message):
    r = infer(server.url, CASES[0], {"label_prompt": [1], **params}, model="refsam3d_clicks")
    assert r.status_code == 422 and message in r.json()["detail"], r.text[:500]
    ok = infer(server.url, CASES[0], {"points": [[10, 10, 10]], "point_labels": [1], "label_prompt": [1]},
               model="refsam3d_clicks")
    assert ok.status_code == 200, ok.text[:300]


def _largest(region: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(region)
    if n == 0:
        return np.zeros_like(region)
    sizes = ndimage.sum(region, labels, range(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


@pytest.mark.xfail(strict=True, reason="issue 20 open: the shipped weights (round 3, served mirrored) refine a text answer "
                   "only a little (text + 3 clicks: Dice 0.892 -> 0.901 over REST on the 40 test cases, "
                   "benchmarks/results/issue25_mirroring/rest_clicks_text.json); here the negative click removes 2 voxels "
                   "of the 22-voxel false-positive blob, not half; strict, so this turns red the day it does")
def test_clicks_fix_the_errors_of_the_text_answer(server, hippocampus_dir):
    """Needs the retrained (click-trained) checkpoint.  Text answer, then a negative click at the interior of its
    largest false-positive blob, then a positive click at the interior of its largest missed region (the issue's
    annotator simulation): each click removes / adds most of its region."""
    case = CASES[1]
    truth = _truth(hippocampus_dir, case) == 2
    params = {"label_prompt": [2], **OHIF_EXTRAS}
    _, text = _all(server, "refsam3d", case, params)
    blob = _largest((text == 2) & ~truth)
    miss = _largest(truth & (text != 2))
    assert blob.sum() >= 3 and miss.sum() >= 3, (blob.sum(), miss.sum())  # the text answer has errors to fix
    neg = _interior(blob)
    meta, after_neg = _all(server, "refsam3d_clicks", case, {**params, "points": [neg], "point_labels": [0]})
    # as the model is trained (lib/training/clicks.py): the first click refines the text answer
    assert meta["prompt_mode"] == "text+clicks" and meta["clicks"]["previous_mask"] == "text answer"
    assert (after_neg[blob] == 2).sum() <= 0.5 * blob.sum(), "the negative click did not remove the false positive"
    pos = _interior(miss)
    meta, after_pos = _all(server, "refsam3d_clicks", case, {**params, "points": [neg, pos], "point_labels": [0, 1]})
    assert meta["clicks"]["previous_mask"] == "last answer"  # the interaction continues from the last answer
    assert (after_pos[miss] == 2).sum() >= 0.5 * miss.sum(), "the positive click did not add the missed region"
    assert (after_pos[blob] == 2).sum() <= 0.5 * blob.sum()  # the earlier correction holds
