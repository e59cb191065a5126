"""The annotate -> train loop over REST on a live server (local studies: four MSD hippocampus MR cases, the shipped
hippocampus checkpoint, ``--conf random_strategy first``): what OHIF's Active Learning tab relies on.

* ``random`` (the only strategy the bundled OHIF asks for) is served by the configured strategy;
* a study with a final label is never returned by any strategy;
* training stats carry ``total_epochs`` / ``total_iterations`` and a validation Dice on held-out labelled studies;
* every run keeps the weights it replaces (with their numbers); ``/info`` lists them; one request restores one;
* publishing without a validation study is said in the log and the stats, and can be refused.
Each test builds the labels it needs, so the order does not matter."""

from __future__ import annotations

import shutil

import pytest
import requests
from loop_helpers import ok, save_model_label, sha256, studies, train_and_wait
from server_process import REPO_ROOT, MonaiLabelServer

CASES = ("hippocampus_004", "hippocampus_006", "hippocampus_007", "hippocampus_011")
CHECKPOINT = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
TINY = {"max_epochs": 2, "threads": 2, "crop_size": "32,32,32"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, hippocampus_dir):
    root = tmp_path_factory.mktemp("app-loop")
    (root / "studies").mkdir()
    for case in CASES:
        shutil.copy(hippocampus_dir / "imagesTr" / f"{case}.nii.gz", root / "studies" / f"{case}.nii.gz")
    (root / "model").mkdir()
    shutil.copy(CHECKPOINT, root / "model" / "refsam3d_small.pt")
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": "minilm",
            "use_pretrained_model": "false", "model_dir": str(root / "model"), "random_strategy": "first"}
    with MonaiLabelServer(root / "studies", conf, root / "server.log") as srv:
        srv.published = root / "model" / "refsam3d_small.pt"
        yield srv


def labelled_at_least(server, n: int) -> list:
    """Final labels on at least ``n`` studies (made with the served model where missing); their ids."""
    listed = studies(server)
    for image in [i for i, done in sorted(listed.items()) if not done][: max(0, n - sum(listed.values()))]:
        save_model_label(server, image)
    return [i for i, done in studies(server).items() if done]


def test_random_is_served_by_the_configured_strategy(server):
    strategies = ok(requests.get(f"{server.url}/info/", timeout=60), server).json()["strategies"]
    assert strategies["random"]["serves"] == "first" and "random_pick" in strategies
    unlabelled = sorted(i for i, done in studies(server).items() if not done)
    for _ in range(3):
        got = requests.post(f"{server.url}/activelearning/random", json={}, timeout=60)
        first = requests.post(f"{server.url}/activelearning/first", json={}, timeout=60)
        assert got.json()["id"] == first.json()["id"]
        assert not unlabelled or got.json()["id"] == unlabelled[0]


def test_a_labelled_study_is_never_served_again(server):
    unlabelled = sorted(i for i, done in studies(server).items() if not done)
    if len(unlabelled) < 2:
        pytest.fail(f"the module needs two unlabelled studies for this test, has {unlabelled}")
    target = unlabelled[0]
    assert requests.post(f"{server.url}/activelearning/first", json={}, timeout=60).json()["id"] == target
    save_model_label(server, target)
    assert studies(server)[target] is True
    for strategy in ("random", "first", "random_pick", "uncertainty") * 3:
        got = ok(requests.post(f"{server.url}/activelearning/{strategy}", json={}, timeout=120), server).json()
        assert got.get("id") != target and got.get("id") in unlabelled, (strategy, got)
    info = ok(requests.get(f"{server.url}/info/", timeout=60), server).json()
    assert info["datastore"]["completed"] == sum(studies(server).values())


def test_training_validates_on_held_out_studies_and_keeps_what_it_replaces(server):
    labelled_at_least(server, 2)
    before = sha256(server.published)
    versions_before = ok(requests.get(f"{server.url}/model/refsam3d/versions", timeout=60), server).json()["versions"]
    stats = train_and_wait(server, {**TINY, "val_split": 0.5, "validate_start": False})
    assert stats["total_epochs"] == 2 and stats["epoch"] <= stats["total_epochs"]
    assert stats["iteration"] <= stats["total_iterations"]
    assert stats["val_studies"] and stats["val_cases"] == len(stats["val_studies"]) >= 1
    assert stats["train_cases"] >= 1 and "held-out" in stats["validation"]
    assert 0.0 <= stats["best_metric"] <= 1.0 and stats["eval"]["key_metric_name"] == "val_mean_dice"
    assert stats["published"] and stats["published_without_validation"] is False
    assert sha256(server.published) != before

    listed = ok(requests.get(f"{server.url}/model/refsam3d/versions", timeout=60), server).json()
    assert len(listed["versions"]) >= len(versions_before)  # same count when the newest held these weights already
    kept = listed["versions"][0]
    assert kept["id"] == stats["archived_version"] and kept["sha256"] == before
    info_versions = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refsam3d"]["weights_versions"]
    assert info_versions[0]["id"] == kept["id"]
    if before == sha256(CHECKPOINT):  # the shipped weights: their test Dice travels with the version
        assert kept["test"]["dice"] > 0.85

    served_before = listed["served"]
    restored = ok(requests.post(f"{server.url}/model/refsam3d/versions/{kept['id']}/restore", timeout=300), server).json()
    assert sha256(server.published) == before and restored["served"] != served_before
    assert restored["versions"][0]["reason"].startswith("replaced by the restore")  # the trained weights are kept too
    res = requests.post(f"{server.url}/infer/refsam3d", params={"image": CASES[0], "output": "json"},
                        data={"params": '{"label_prompt": ["anterior hippocampus"]}'}, timeout=600)
    assert res.status_code == 200, res.text[:300]
    assert requests.get(f"{server.url}/model/refsam3d/versions", timeout=60).json()["served"] == restored["served"]


def test_publishing_without_validation_is_said_and_can_be_refused(server):
    labelled_at_least(server, 1)
    versions_before = len(requests.get(f"{server.url}/model/refsam3d/versions", timeout=60).json()["versions"])
    before = sha256(server.published)
    refused = train_and_wait(server, {**TINY, "val_split": 0.0, "publish_unvalidated": False})
    assert refused["published"] is None and refused["val_cases"] == 0 and "none" in refused["validation"]
    assert sha256(server.published) == before and "Not publishing: no validation study" in server.log()

    stats = train_and_wait(server, {**TINY, "val_split": 0.0})
    assert stats["published"] and stats["published_without_validation"] is True and stats["best_metric"] is None
    assert "Publishing WITHOUT validation" in server.log()
    versions = requests.get(f"{server.url}/model/refsam3d/versions", timeout=60).json()["versions"]
    # what it replaced is the newest version (a new one, or the newest already held those very weights)
    assert versions[0]["sha256"] == before and versions[0]["id"] == stats["archived_version"]
    assert len(versions) >= versions_before


def test_restoring_an_unknown_version_is_a_404(server):
    before = sha256(server.published)
    res = requests.post(f"{server.url}/model/refsam3d/versions/no-such-version/restore", timeout=60)
    assert res.status_code == 404 and "no weights version 'no-such-version'" in res.json()["detail"]
    assert sha256(server.published) == before


def test_uploaded_weights_keep_the_served_ones_and_garbage_is_refused(server):
    before = sha256(server.published)
    bad = requests.put(f"{server.url}/model/refsam3d", files={"file": ("x.pt", b"not weights")}, timeout=60)
    assert bad.status_code == 400 and "not a RefSAM3D checkpoint" in bad.json()["detail"]
    assert sha256(server.published) == before
    n = len(requests.get(f"{server.url}/model/refsam3d/versions", timeout=60).json()["versions"])
    with open(CHECKPOINT, "rb") as f:
        up = ok(requests.put(f"{server.url}/model/refsam3d", files={"file": ("shipped.pt", f)}, timeout=300), server)
    assert sha256(server.published) == sha256(CHECKPOINT) and up.json()["checksum"].endswith(sha256(CHECKPOINT))
    versions = requests.get(f"{server.url}/model/refsam3d/versions", timeout=60).json()["versions"]
    if before != sha256(CHECKPOINT):  # other weights were served: kept under the upload's reason
        assert len(versions) == n + 1 and versions[0]["sha256"] == before and "upload" in versions[0]["reason"]
    else:  # the same weights: kept once (the newest version) or newly, never lost
        assert any(v["sha256"] == before for v in versions)
