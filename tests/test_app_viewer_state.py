"""What a viewer shows, against a real ``monailabel start_server`` over HTTP (issue 21, items 1, 2 and 5).

* every mask value is declared in ``/info`` under the name of what it is (OHIF names segments from ``/info``,
  not from the response): labels of the set typed as text keep their own value, other free text gets the
  "free text prompt" value, ``text_prompt`` + ``label_prompt`` are both answered;
* the app name and the model description say whether the weights are trained, on what and how well;
* ``GET /model/refsam3d`` and ``/model/info/refsam3d`` serve the published weights, their checksum and train stats.

Each test sets the weights state it needs itself (``untrained`` / ``trained`` fixtures), so the order does not matter.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import requests
from app_fixtures import TEST_LABEL_SET, build_studies, infer, parse_all, read_volume, small_server_conf
from server_process import MonaiLabelServer

LABELS = {e["name"]: e["index"] for e in TEST_LABEL_SET["labels"]}
FREE = 255  # the free-text value for a set whose indices are all below 255
OHIF_ADDS = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False, "restore_label_idx": False}
TEST_EVALUATION = {"split_part": "test", "num_cases": 12, "mirror_axes": [], "mean": {"dice": 0.8771},
                   "per_label": {n: {"dice": 0.8771} for n in LABELS}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, totalseg_dir, hippocampus_dir, tiny_text_encoder):
    root = tmp_path_factory.mktemp("viewer-state")
    studies = build_studies(root / "studies", totalseg_dir, hippocampus_dir, cases=())
    conf = small_server_conf(root, tiny_text_encoder)
    with MonaiLabelServer(studies, conf, root / "server.log") as srv:
        srv.root, srv.model_dir = root, root / "model"
        yield srv


def _publish(server, tiny_text_encoder, **extra):
    import torch
    from lib.model import build_refsam3d, save_checkpoint

    torch.manual_seed(7)
    model = build_refsam3d("small", text_encoder=str(tiny_text_encoder))
    return save_checkpoint(model, server.model_dir / "refsam3d_small.pt", extra=extra)


@pytest.fixture
def untrained(server):
    (server.model_dir / "refsam3d_small.pt").unlink(missing_ok=True)
    return server


@pytest.fixture
def trained(server, tiny_text_encoder):
    path = _publish(server, tiny_text_encoder, label_set_name="test_abdomen", trained_labels=list(LABELS),
                    test_evaluation_single_pass=TEST_EVALUATION,
                    training={"run_id": "r1", "epoch": 3, "iteration": 42, "val": {"mean_dice": 0.5}})
    yield server
    path.unlink(missing_ok=True)


def _ok(response, server):
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}\nlog:\n{server.log()[-3000:]}"
    return response


def _info(server):
    return _ok(requests.get(f"{server.url}/info/", timeout=60), server).json()


def _ohif_names(info):
    """mask value -> segment name, as OHIF builds it from /info (models.<model>.labels)."""
    return {v: n for n, v in info["models"]["refsam3d"]["labels"].items()}


def _run(server, params, output="all"):
    params_out, image, name = parse_all(_ok(infer(server.url, "example_ct_sm", params, output=output), server))
    arr, _ = read_volume(image, name)
    return params_out, arr


def _assert_mask_matches(params, arr, info):
    """Every non-zero value is one the response names, /info declares it under the right name, counts agree."""
    values, counts = np.unique(arr, return_counts=True)
    found = {int(v): int(c) for v, c in zip(values, counts) if v}
    assert found, "the mask is empty: the test cannot tell values apart"
    assert set(found) <= set(params["label_names"].values()), (found, params["label_names"])
    names = _ohif_names(info)
    free = params.get("free_text")
    for shown, value in params["label_names"].items():
        expected = free["name"] if free and value == free["value"] else shown
        assert names[value] == expected, f"OHIF would show value {value} as {names.get(value)!r}, not {expected!r}"
        assert params["voxels"][shown] == found.get(value, 0)


# ---------------------------------------------------------------------------------------------------- item 1
def test_info_declares_the_free_text_label_for_the_model_and_the_app(server):
    info = _info(server)
    assert info["models"]["refsam3d"]["labels"] == {**LABELS, "free text prompt": FREE}
    assert info["models"]["refsam3d"]["free_text_label"] == {"name": "free text prompt", "value": FREE}
    assert "free text prompt" in info["labels"] and set(LABELS) <= set(info["labels"])


@pytest.mark.parametrize("typed, label", [
    ("Kidney Right", "kidney_right"),  # name, other case, space for underscore
    ("  LIVER ", "liver"),
    ("ct images, abdominal organ segmentation, aorta", "aorta"),  # the set's prompt, other case
])
def test_text_prompt_that_is_a_label_uses_its_own_value_and_name(server, typed, label):
    params, arr = _run(server, {"text_prompt": typed, "threshold": 0.05, **OHIF_ADDS})
    assert params["label_names"] == {label: LABELS[label]}
    assert params["prompts"][label] == next(e["prompt"] for e in TEST_LABEL_SET["labels"] if e["name"] == label)
    assert params["free_text"] is None
    _assert_mask_matches(params, arr, _info(server))


def test_free_text_gets_the_declared_free_text_value(server):
    params, arr = _run(server, {"text_prompt": "brain", "threshold": 0.05, **OHIF_ADDS})
    assert params["label_names"] == {"brain": FREE} and params["prompt_mode"] == "text"
    assert params["free_text"] == {"name": "free text prompt", "value": FREE, "prompt": "brain"}
    assert arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= {0, FREE}
    _assert_mask_matches(params, arr, _info(server))


def test_text_and_label_prompt_are_both_answered(server):
    # what OHIF's Class Prompts sends when a text prompt was left in the options
    params, arr = _run(server, {"text_prompt": "brain", "threshold": 0.05, "label_prompt": [1, 52], **OHIF_ADDS})
    assert params["prompt_mode"] == "text+labels"
    assert params["label_names"] == {"brain": FREE, "spleen": 1, "aorta": 52}
    assert set(params["prompts"]) == {"brain", "spleen", "aorta"}
    _assert_mask_matches(params, arr, _info(server))


def test_text_that_is_a_label_and_the_same_label_prompt_give_one_mask(server):
    res = _ok(infer(server.url, "example_ct_sm", {"text_prompt": "spleen", "label_prompt": [1, 5]}), server).json()
    assert res["label_names"] == {"spleen": 1, "liver": 5}


def test_ticking_free_text_prompt_in_class_prompts_segments_the_text(server):
    res = _ok(infer(server.url, "example_ct_sm", {"text_prompt": "brain", "label_prompt": [FREE]}), server).json()
    assert res["label_names"] == {"brain": FREE}
    res = infer(server.url, "example_ct_sm", {"label_prompt": ["free text prompt"]})
    assert res.status_code == 422 and "no text_prompt" in res.json()["detail"]
    assert _info(server)["models"]["refsam3d"]["labels"]["free text prompt"] == FREE  # still serving


# ---------------------------------------------------------------------------------------------------- item 2
def test_untrained_weights_are_said_in_the_app_name_and_description(untrained):
    info = _info(untrained)
    assert "UNTRAINED weights" in info["name"] and info["name"].startswith("RefSAM3D Label (small, test_abdomen)")
    assert info["description"].startswith("UNTRAINED weights")
    model = info["models"]["refsam3d"]
    assert model["description"].startswith("UNTRAINED weights")
    assert model["weights"]["card"]["trained"] is False


def test_trained_weights_show_label_set_and_test_dice(trained):
    from monailabel.client import MONAILabelClient  # what 3D Slicer's module uses

    info = MONAILabelClient(trained.url).info()
    assert "trained on test_abdomen, test Dice 0.877 (12 held-out cases)" in info["name"]
    assert "UNTRAINED" not in info["name"] and info["description"].startswith("trained on test_abdomen, test Dice")
    model = info["models"]["refsam3d"]
    assert model["description"].startswith("trained on test_abdomen, test Dice 0.877")
    card = model["weights"]["card"]
    assert card["trained"] is True and card["test"]["dice"] == 0.8771 and card["trained_labels"] == list(LABELS)


def test_weights_of_another_label_set_are_flagged(server, tiny_text_encoder):
    path = _publish(server, tiny_text_encoder, label_set_name="btcv")
    try:
        name = _info(server)["name"]
        assert "trained on btcv, no test Dice recorded; SERVED WITH LABEL SET test_abdomen" in name
    finally:
        path.unlink()


# ---------------------------------------------------------------------------------------------------- item 5
def test_model_endpoints_say_404_without_published_weights(untrained):
    for path in ("/model/refsam3d", "/model/info/refsam3d"):
        res = requests.get(f"{untrained.url}{path}", timeout=60)
        assert res.status_code == 404 and "NOT Found" in res.json()["detail"]


def test_model_endpoints_download_the_weights_with_checksum_and_stats(trained, tmp_path):
    from lib.model import read_checkpoint

    published = (trained.model_dir / "refsam3d_small.pt").read_bytes()
    res = _ok(requests.get(f"{trained.url}/model/refsam3d", timeout=120), trained)
    assert res.content == published
    assert 'filename="refsam3d.pt"' in res.headers["content-disposition"]
    (tmp_path / "downloaded.pt").write_bytes(res.content)
    assert read_checkpoint(tmp_path / "downloaded.pt")["extra"]["test_evaluation_single_pass"] == TEST_EVALUATION

    meta = _ok(requests.get(f"{trained.url}/model/info/refsam3d", timeout=60), trained).json()
    assert meta["checksum"] == "SHA256:" + hashlib.sha256(published).hexdigest()
    assert meta["train_stats"]["iteration"] == 42  # the checkpoint's training record (no run on this server)
    assert meta["weights"]["test"]["dice"] == 0.8771 and meta["weights"]["label_set"] == "test_abdomen"
    json.dumps(meta)  # plain JSON
