"""Live server, shipped hippocampus weights, real MiniLM: the answer says how sure it is (issue 25, requirement 3).

The served checkpoint is the shipped one with ``trained_prompts`` recorded in its ``extra`` (as training with
synonyms writes it), so the server's known phrasings come from the checkpoint, not from a test double.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import requests
from app_fixtures import hippocampus_studies, infer
from server_process import REPO_ROOT, MonaiLabelServer

CHECKPOINT = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
CASE = json.loads((REPO_ROOT / "benchmarks" / "results" / "hippocampus_split.json").read_text())["test"][0]
TRAINED_PROMPTS = {
    "anterior hippocampus": ["MRI images, hippocampus segmentation, anterior hippocampus (hippocampus proper)",
                             "hippocampal head", "pes hippocampi"],
    "posterior hippocampus": ["MRI images, hippocampus segmentation, posterior hippocampus (subiculum)",
                              "hippocampal tail", "hippocampal body"],
}


def _start(root, hippocampus_dir, **conf) -> MonaiLabelServer:
    from lib.model import update_checkpoint_extra

    studies = hippocampus_studies(root, hippocampus_dir, [CASE])
    model_dir = root / "model"
    model_dir.mkdir()
    shutil.copy(CHECKPOINT, model_dir / "refsam3d_small.pt")
    update_checkpoint_extra(model_dir / "refsam3d_small.pt", trained_prompts=TRAINED_PROMPTS)
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": "minilm", "use_pretrained_model": "false",
            "model_dir": str(model_dir), "skip_trainers": "true", **conf}
    return MonaiLabelServer(studies, conf, root / "server.log")


@pytest.fixture(scope="module")
def server(tmp_path_factory, hippocampus_dir):
    with _start(tmp_path_factory.mktemp("prompt-report"), hippocampus_dir) as srv:
        yield srv


def _ok(url: str, params: dict) -> dict:
    r = infer(url, CASE, params)
    assert r.status_code == 200, r.text[:500]
    return r.json()


def test_exact_label_name_is_found_with_similarity_one(server):
    body = _ok(server.url, {"text_prompt": "Anterior Hippocampus"})
    name = "anterior hippocampus"
    assert body["label_names"] == {name: 1}  # what OHIF and Slicer read is unchanged
    assert body["found"] == {name: True} and body["voxels"][name] > 0
    assert isinstance(body["confidence"][name], float) and 0.5 <= body["confidence"][name] <= 1.0  # threshold 0.5
    sim = body["prompt_similarity"][name]
    assert sim["score"] == 1.0 and sim["label"] == name and sim["nearest"] == name
    assert [t["label"] for t in sim["top_labels"]] == [name, "posterior hippocampus"]
    assert not any("did you mean" in w for w in body["warnings"])


def test_synonym_is_near_its_label_and_unknown_structure_is_warned(server):
    body = _ok(server.url, {"text_prompt": "head of the hippocampus", "label_prompt": [2]})
    sim = body["prompt_similarity"]["head of the hippocampus"]
    assert sim["label"] == "anterior hippocampus" and sim["nearest"] == "hippocampal head" and 0.8 < sim["score"] < 1.0
    assert body["prompt_similarity"]["posterior hippocampus"]["score"] == 1.0  # a label_prompt: its own name
    assert set(body["found"]) == set(body["confidence"]) == set(body["label_names"])
    assert not any("did you mean" in w for w in body["warnings"])

    body = _ok(server.url, {"text_prompt": "liver"})
    assert body["prompt_similarity"]["liver"]["score"] < 0.6
    warned = [w for w in body["warnings"] if "'liver'" in w]
    assert len(warned) == 1 and re.search(r"did you mean (anterior|posterior) hippocampus or (anterior|posterior) "
                                          r"hippocampus\?", warned[0]), body["warnings"]
    assert body["found"]["liver"] == (body["voxels"]["liver"] > 0)


def test_empty_mask_has_no_confidence(server):
    body = _ok(server.url, {"label_prompt": [1, 2], "threshold": 0.999999})
    for name, found in body["found"].items():
        assert found == (body["voxels"][name] > 0)
        assert (body["confidence"][name] is None) == (not found)
        assert found is False or body["confidence"][name] >= 0.999999 - 1e-6


def test_info_lists_synonyms_and_what_the_weights_know(server):
    from lib.labelsets import load_label_set

    info = requests.get(f"{server.url}/info/", timeout=60).json()
    model = info["models"]["refsam3d"]
    assert "knows: anterior hippocampus, posterior hippocampus. " in info["description"]  # what Slicer shows
    label_set = load_label_set("msd_hippocampus")
    assert set(model["synonyms"]) == {"anterior hippocampus", "posterior hippocampus"}
    assert {"hippocampal head", "pes hippocampi"} <= set(model["synonyms"]["anterior hippocampus"])  # recorded
    for name, listed in model["synonyms"].items():  # what the weights were trained with + the set's synonyms
        assert set(label_set.synonyms[name]) <= set(listed) and len(listed) == len(set(listed))
        assert name not in listed and label_set.prompts[name] not in listed  # the name and prompt are not synonyms
    assert "knows: anterior hippocampus, posterior hippocampus" in model["description"]
    assert model["prompt_checks"] == {"min_prompt_similarity": 0.6, "strict_prompts": False}


def test_strict_prompts_answers_422_with_the_nearest_labels(tmp_path, hippocampus_dir):
    with _start(tmp_path, hippocampus_dir, strict_prompts="true", min_prompt_similarity="0.7") as srv:
        r = infer(srv.url, CASE, {"text_prompt": "amygdala"})
        assert r.status_code == 422, r.text[:500]
        body = r.json()
        assert "'amygdala'" in body["detail"] and "did you mean" in body["detail"]
        assert sorted(body["nearest_labels"]) == ["anterior hippocampus", "posterior hippocampus"]
        assert body["prompt_similarity"]["score"] < 0.7
        ok = _ok(srv.url, {"text_prompt": "hippocampal tail"})  # the server keeps serving, known prompts pass
        assert ok["prompt_similarity"]["hippocampal tail"] == {**ok["prompt_similarity"]["hippocampal tail"], "score": 1.0,
                                                               "label": "posterior hippocampus"}
        assert ok["found"]["hippocampal tail"] is True
