"""Annotate -> fine-tune loop against a real ``monailabel start_server`` (small preset, real MiniLM, offline).

Studies: four MSD hippocampus cases with final labels (one also with a model-made ``original`` label
that lost its posterior part) and two unlabeled cases. Training over REST uses a tiny budget.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from app_fixtures import infer
from server_process import REPO_ROOT, MonaiLabelServer

LABELLED = ("hippocampus_004", "hippocampus_006", "hippocampus_007", "hippocampus_011")
UNLABELED = ("hippocampus_014", "hippocampus_015")
ORIGINAL = "hippocampus_004"
# a good model for this server's label set and text encoder (MiniLM), published by the tests that need one
SHIPPED = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"


def _build_studies(dest: Path, hippocampus_dir: Path) -> Path:
    final = dest / "labels" / "final"
    original = dest / "labels" / "original"
    final.mkdir(parents=True)
    original.mkdir(parents=True)
    for case in LABELLED + UNLABELED:
        shutil.copy(hippocampus_dir / "imagesTr" / f"{case}.nii.gz", dest / f"{case}.nii.gz")
    for case in LABELLED:
        shutil.copy(hippocampus_dir / "labelsTr" / f"{case}.nii.gz", final / f"{case}.nii.gz")
    # the model's mask for ORIGINAL: anterior right, posterior missing -> Dice 1 and 0, mean 0.5
    img = nib.load(str(hippocampus_dir / "labelsTr" / f"{ORIGINAL}.nii.gz"))
    arr = np.asanyarray(img.dataobj).astype(np.uint8)
    arr[arr == 2] = 0
    nib.save(nib.Nifti1Image(arr, img.affine), str(original / f"{ORIGINAL}.nii.gz"))
    return dest


@pytest.fixture(scope="module")
def server(tmp_path_factory, hippocampus_dir, minilm_text_encoder):
    root = tmp_path_factory.mktemp("train-server")
    studies = _build_studies(root / "studies", hippocampus_dir)
    conf = {
        "preset": "small",
        "label_set": "msd_hippocampus",
        "text_encoder": str(minilm_text_encoder),
        "use_pretrained_model": "false",
        "model_dir": str(root / "model"),
        "train_threads": "2",
        "skip_scoring": "false",  # the app turns scoring off by default
    }
    # scoring runs when asked (below), not automatically after start-up / training / next-sample
    srv = MonaiLabelServer(studies, conf, root / "server.log", env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    srv.start()
    srv.root, srv.model_dir = root, root / "model"
    srv.published = root / "model" / "refsam3d_small.pt"
    yield srv
    srv.stop()


def _ok(response: requests.Response, server) -> requests.Response:
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}\nlog:\n{server.log()[-4000:]}"
    return response


def _wait_task(server, kind: str, timeout: float = 420, seen: list | None = None) -> dict:
    deadline = time.time() + timeout
    task = {}
    while time.time() < deadline:
        r = requests.get(f"{server.url}/{kind}/", timeout=30)
        if r.status_code == 200:
            task = r.json()
            if seen is not None:
                seen.extend(task.get("details") or [])
            if task.get("status") in ("DONE", "ERROR", "STOPPED"):
                return task
        time.sleep(1.0)
    raise AssertionError(f"{kind} did not finish in {timeout}s: {task}\nlog:\n{server.log()[-4000:]}")


def _info(server, image: str) -> dict:
    return _ok(requests.get(f"{server.url}/datastore/image/info", params={"image": image}, timeout=30), server).json()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _publish_good_model(server) -> str:
    """Publish the shipped hippocampus checkpoint (complete file renamed into place); returns its SHA-256."""
    tmp = server.published.with_name(".publishing.tmp")
    server.published.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED, tmp)
    os.replace(tmp, server.published)
    return _sha(server.published)


def _train_processes(server) -> list:
    """The server's training subprocesses (MONAI Label runs ``monailabel.interfaces.utils.app -m train``)."""
    import psutil

    out = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "monailabel.interfaces.utils.app" in cmd and "-m train" in cmd:
            out.append(child)
    return out


def test_info_lists_trainer_strategies_and_scoring(server):
    info = _ok(requests.get(f"{server.url}/info/", timeout=60), server).json()
    trainer = info["trainers"]["refsam3d"]
    for key in ("max_epochs", "crop_size", "learning_rate", "val_split", "preset", "labels", "max_minutes"):
        assert key in trainer["config"], trainer["config"]
    assert trainer["config"]["preset"][0] == "small" and trainer["config"]["crop_size"] == "48,48,48"
    assert {"random", "first", "uncertainty"} <= set(info["strategies"])
    assert {"dice", "uncertainty"} <= set(info["scoring"])


def test_train_over_rest_publishes_and_next_infer_uses_it(server):
    params: dict = {}
    server.published.unlink(missing_ok=True)  # this test starts from the base weights
    before = _ok(infer(server.url, UNLABELED[0], params), server).json()
    assert before["model"]["trained"] is False and not server.published.exists()

    request = {"max_epochs": 2, "crop_size": "48", "val_split": 0.25, "train_batch_size": 2,
               "learning_rate": 1e-3, "device": "cpu"}
    task = _ok(requests.post(f"{server.url}/train/refsam3d", json=request, timeout=60), server).json()
    assert task["status"] in ("SUBMITTED", "RUNNING")
    lines: list = []
    task = _wait_task(server, "train", seen=lines)
    assert task["status"] == "DONE", f"{task}\n{server.log()[-4000:]}"
    log = "\n".join(lines) + server.log()
    assert "it/s" in log and "ETA" in log and "Epoch 2/2" in log  # progress with rates, in /train/ details and the log

    # the best model is published where the infer task looks, and has per-label validation Dice
    assert server.published.exists()
    from lib.model import read_checkpoint

    extra = read_checkpoint(server.published)["extra"]
    assert extra["label_set_name"] == "msd_hippocampus" and extra["training"]["epoch"] in (1, 2)
    assert set(extra["training"]["val"]["dice"]) == {"anterior hippocampus", "posterior hippocampus"}

    stats = _ok(requests.get(f"{server.url}/info/", timeout=60), server).json()["train_stats"]["refsam3d"]
    assert stats["status"] == "DONE" and stats["epoch"] == 2 and stats["iteration"] >= 2
    assert "val_dice_anterior hippocampus" in stats["eval"]["metrics"]
    assert stats["iterations_per_s"] and stats["train_cases"] == 3 and stats["val_cases"] == 1
    events = list((server.model_dir / "refsam3d").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard events"

    after = _ok(infer(server.url, UNLABELED[0], params), server).json()
    assert after["model"]["trained"] is True
    assert after["model"]["version"] != before["model"]["version"]
    assert after["model"]["version"].startswith("published")


def test_stop_over_rest_ends_the_run_and_leaves_the_published_model_alone(server, minilm_text_encoder):
    import psutil
    from lib.model import load_checkpoint

    published_sha = _publish_good_model(server)
    # no validation split: this run would publish at the end of every epoch (a few seconds) if it kept running
    request = {"max_epochs": 200, "crop_size": "48", "val_split": 0, "train_batch_size": 1, "device": "cpu",
               "publish": "last"}
    _ok(requests.post(f"{server.url}/train/refsam3d", json=request, timeout=60), server)
    deadline = time.time() + 240
    while time.time() < deadline:
        task = requests.get(f"{server.url}/train/", timeout=30).json()
        details = task.get("details") or []
        if any("Training run" in line for line in details):
            break
        assert task.get("status") in ("SUBMITTED", "RUNNING"), task
        time.sleep(0.2)
    runs = _train_processes(server)
    assert runs, f"no training process found\n{server.log()[-3000:]}"
    stopped = _ok(requests.delete(f"{server.url}/train/", timeout=60), server).json()
    assert stopped["status"] == "STOPPED"
    assert not any("Published model" in line for line in details), "the run published before it could be stopped"
    _, alive = psutil.wait_procs(runs, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "the training process is still running"
    time.sleep(5.0)  # longer than an epoch of this run: a run that escaped the stop would have published by now
    assert not _train_processes(server) or all(p.status() == psutil.STATUS_ZOMBIE for p in _train_processes(server))
    assert _sha(server.published) == published_sha  # not a byte of the published model changed
    # still a complete checkpoint; with this machine's MiniLM (the file names the folder of the machine it was trained on)
    load_checkpoint(server.published, text_encoder=str(minilm_text_encoder))
    assert _ok(infer(server.url, UNLABELED[1], {"label_prompt": [1]}), server).json()["model"]["trained"] is True


@pytest.mark.parametrize("strategy", ["random", "first", "uncertainty"])
def test_activelearning_strategy_returns_an_unlabeled_study(server, strategy):
    res = _ok(requests.post(f"{server.url}/activelearning/{strategy}", json={}, timeout=60), server).json()
    assert res["id"] in UNLABELED, res
    if strategy == "first":
        assert res["id"] == UNLABELED[0]


def test_uncertainty_scoring_caches_scores_and_strategy_ranks_by_them(server):
    _publish_good_model(server)  # a model version of its own: every unlabeled study is scored afresh
    _ok(requests.post(f"{server.url}/scoring/uncertainty", json={}, timeout=60), server)
    task = _wait_task(server, "scoring", timeout=300)
    assert task["status"] == "DONE", task
    scores = {}
    for image in UNLABELED:
        info = _info(server, image)
        assert 0.0 <= info["uncertainty"] <= 1.0 and info["uncertainty_model"] != "base", info
        scores[image] = info["uncertainty"]
    for image in LABELLED:
        assert "uncertainty" not in _info(server, image)
    # a second run with the same weights skips every study it has already scored
    stamps = {image: _info(server, image)["uncertainty_ts"] for image in UNLABELED}
    time.sleep(1.1)  # the stamps are in seconds
    _ok(requests.post(f"{server.url}/scoring/uncertainty", json={}, timeout=60), server)
    assert _wait_task(server, "scoring", timeout=300)["status"] == "DONE"
    assert {image: _info(server, image)["uncertainty_ts"] for image in UNLABELED} == stamps
    # served studies are remembered; the most uncertain study not served in the last hour comes first
    for image in UNLABELED:
        requests.put(f"{server.url}/datastore/image/info", params={"image": image}, data={"info": '{"strategy": {}}'},
                     timeout=30)
    res = _ok(requests.post(f"{server.url}/activelearning/uncertainty", json={}, timeout=60), server).json()
    assert res["id"] == max(scores, key=scores.get) and res["scored_by_current_model"] is True
    # a second annotator gets the other study
    res2 = _ok(requests.post(f"{server.url}/activelearning/uncertainty", json={}, timeout=60), server).json()
    assert res2["id"] != res["id"]


def test_dice_scoring_writes_original_vs_final_dice(server):
    _ok(requests.post(f"{server.url}/scoring/dice", json={}, timeout=60), server)
    task = _wait_task(server, "scoring", timeout=300)
    assert task["status"] == "DONE", task
    info = _info(server, ORIGINAL)
    assert info["dice"] == pytest.approx(0.5)
    assert info["dice_per_label"] == {"anterior hippocampus": pytest.approx(1.0), "posterior hippocampus": 0.0}
    assert "dice" not in _info(server, LABELLED[1])  # no original label there
