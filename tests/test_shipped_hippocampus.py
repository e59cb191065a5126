"""The shipped MSD hippocampus checkpoint (``checkpoints/msd_hippocampus/refsam3d_small.pt``) really segments.

It was trained by ``benchmarks/bench_hippocampus.py --minutes 60`` (see ``checkpoints/README.md``); these
tests use held-out test cases of that run's split (never trained on), through the command line and
through a live server, so a code change that breaks the stored weights or the pre-processing fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from app_fixtures import infer, read_volume
from server_process import REPO_ROOT, MonaiLabelServer

CHECKPOINT = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
# the final model for new data: the same recipe on all 200 cases (so no held-out case is left to test it on)
ALL_CASES_CHECKPOINT = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small_all_cases.pt"
SPLIT = REPO_ROOT / "benchmarks" / "results" / "hippocampus_split.json"
NUM_CASES = 6
# the full 40-case test split scored mean Dice 0.891 (checkpoints/README.md)
MIN_MEAN_DICE = 0.85
MAX_SWAPPED_DICE = 0.10


def _test_cases(n: int) -> list[str]:
    return json.loads(SPLIT.read_text())["test"][:n]


def test_checkpoint_is_shipped_with_its_split():
    assert CHECKPOINT.is_file(), f"{CHECKPOINT} is missing"
    from lib.model import read_checkpoint

    payload = read_checkpoint(CHECKPOINT)
    extra = payload["extra"]
    assert extra["label_set_name"] == "msd_hippocampus" and payload["config"]["preset"] == "small"
    train_ids = set(json.loads(SPLIT.read_text())["train"])
    assert not train_ids & set(_test_cases(40)), "test cases overlap the training cases"


@pytest.mark.parametrize("checkpoint", [CHECKPOINT, ALL_CASES_CHECKPOINT], ids=["split", "all_cases"])
def test_shipped_checkpoints_name_their_text_encoder_portably(checkpoint):
    """The files name MiniLM by its Hugging Face name, not by a folder of the machine that trained them; offline
    that name resolves to the installed package (``portable_text_encoder``), and a save stores it the same way."""
    from lib.model import read_checkpoint
    from lib.model_store import minilm_folder
    from lib.training.runner import MINILM_PUBLIC_NAME, portable_text_encoder, public_text_encoder

    stored = read_checkpoint(checkpoint)["config"]["text_encoder"]
    assert stored == MINILM_PUBLIC_NAME
    assert Path(portable_text_encoder(stored)) == minilm_folder()
    assert public_text_encoder(str(minilm_folder())) == MINILM_PUBLIC_NAME
    assert public_text_encoder("/some/other/encoder") == "/some/other/encoder"  # anything else is kept as given


def test_evaluate_command_on_held_out_cases(tmp_path, hippocampus_dir):
    out = tmp_path / "eval"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--checkpoint", str(CHECKPOINT),
           "--data", str(hippocampus_dir), "--split-file", str(SPLIT), "--part", "test", "--max-cases", str(NUM_CASES),
           "--out", str(out), "--no-progress",  # the stored text encoder (MiniLM) resolves offline
           "--mirror-axes", "0", "--largest-component"]  # test-time mirroring + post-processing, as documented
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "evaluation.json").read_text())
    assert result["num_cases"] == NUM_CASES
    assert result["info"]["mirror_axes"] == [0] and result["largest_component"] is True
    per_label = {name: v["dice_mean"] for name, v in result["per_label"].items()}
    assert result["mean"]["dice"] >= MIN_MEAN_DICE, per_label
    assert all(d >= MIN_MEAN_DICE - 0.05 for d in per_label.values()), per_label
    assert result["routing"]["swapped_dice_mean"] < MAX_SWAPPED_DICE, result["routing"]  # the text routes
    assert (out / "evaluation.png").stat().st_size > 0 and (out / "evaluation.csv").is_file()


def test_all_cases_checkpoint_is_the_measured_recipe_on_every_case(tmp_path, hippocampus_dir):
    """Same architecture and recipe as the measured checkpoint, trained on every case, and it segments.

    Every case is one of its training cases, so the Dice here checks that the weights and the pre-processing
    work (a fit check); its generalisation estimate is the measured checkpoint's test result."""
    from lib.model import read_checkpoint
    from lib.training import TrainConfig, msd_datalist

    final, measured = read_checkpoint(ALL_CASES_CHECKPOINT), read_checkpoint(CHECKPOINT)
    assert {k: final["config"][k] for k in measured["config"]} == measured["config"]  # the same architecture
    assert final["config"] == measured["config"]  # both fine-tuned by the same code (issues 25 and 20)
    assert final["extra"]["label_set_name"] == measured["extra"]["label_set_name"] == "msd_hippocampus"
    assert sorted(final["extra"]["train_cases"]) == sorted(d["id"] for d in msd_datalist(hippocampus_dir))
    assert final["extra"]["val_cases"] == []
    # options the measured checkpoint predates (e.g. ``augmentation``) take their defaults
    recipe, reference = (TrainConfig.from_mapping(ckpt["extra"]["training"]["config"]) for ckpt in (final, measured))
    for key in ("learning_rate", "weight_decay", "warmup_fraction", "min_lr_fraction", "batch_size", "num_samples",
                "crop_size", "pos_neg_ratio", "augmentation", "flip_axes", "grad_clip", "amp_cpu", "max_minutes"):
        assert getattr(recipe, key) == getattr(reference, key), key

    out = tmp_path / "eval"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--checkpoint", str(ALL_CASES_CHECKPOINT),
           "--data", str(hippocampus_dir), "--split-file", str(SPLIT), "--part", "test", "--max-cases", "2",
           "--out", str(out), "--no-progress"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "evaluation.json").read_text())
    assert result["mean"]["dice"] >= MIN_MEAN_DICE and result["routing"]["swapped_dice_mean"] < MAX_SWAPPED_DICE


def test_evaluate_command_ensembles_checkpoints(tmp_path, hippocampus_dir):
    """Two checkpoints after --checkpoint are one ensemble; the same weights twice must score as one model.

    (Averaging itself is checked with unequal members in test_evaluation.py.)"""
    def evaluate(checkpoints: list[Path], out: Path) -> dict:
        cmd = [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--checkpoint", *map(str, checkpoints),
               "--data", str(hippocampus_dir), "--split-file", str(SPLIT), "--part", "test", "--max-cases", "2",
               "--out", str(out), "--no-progress", "--no-cross-prompts"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads((out / "evaluation.json").read_text())

    copy = tmp_path / "copy.pt"
    shutil.copy(CHECKPOINT, copy)
    single = evaluate([CHECKPOINT], tmp_path / "single")
    pair = evaluate([CHECKPOINT, copy], tmp_path / "pair")
    assert pair["info"]["checkpoint"] == [str(CHECKPOINT.resolve()), str(copy.resolve())]
    assert pair["info"]["roi_size"] == [single["info"]["roi_size"]] * 2  # each member's window is recorded
    assert pair["num_cases"] == single["num_cases"] == 2
    for a, b in zip(single["cases"], pair["cases"]):
        assert a["id"] == b["id"]
        for name in a["labels"]:
            assert b["labels"][name]["dice"] == pytest.approx(a["labels"][name]["dice"], abs=1e-6), (a["id"], name)
    assert single["mean"]["dice"] >= MIN_MEAN_DICE


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def server(tmp_path_factory, hippocampus_dir, minilm_text_encoder):
    root = tmp_path_factory.mktemp("shipped-hippocampus")
    studies = root / "studies"
    studies.mkdir()
    for case in _test_cases(2):
        shutil.copy(hippocampus_dir / "imagesTr" / f"{case}.nii.gz", studies / f"{case}.nii.gz")
    model_dir = root / "model"
    model_dir.mkdir()
    shutil.copy(CHECKPOINT, model_dir / "refsam3d_small.pt")  # as README: copy it where the server looks
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": "minilm",
            "use_pretrained_model": "false", "model_dir": str(model_dir)}
    with MonaiLabelServer(studies, conf, root / "server.log") as srv:
        yield srv


@pytest.mark.parametrize("prompt,index", [("posterior hippocampus", 2), ("anterior hippocampus", 1)])
def test_server_text_prompt_matches_the_manual_label(server, hippocampus_dir, prompt, index):
    case = _test_cases(1)[0]
    r = infer(server.url, case, {"text_prompt": prompt, "result_extension": ".nii.gz"}, output="image")
    assert r.status_code == 200, r.text[:500]
    mask, affine = read_volume(r.content, "mask.nii.gz")
    gt_img = nib.load(str(hippocampus_dir / "labelsTr" / f"{case}.nii.gz"))
    gt = np.asanyarray(gt_img.dataobj)
    assert mask.shape == gt.shape and np.allclose(affine, gt_img.affine, atol=1e-3)  # back on the original grid
    assert _dice(mask > 0, gt == index) >= MIN_MEAN_DICE - 0.05
    assert _dice(mask > 0, gt == 3 - index) < MAX_SWAPPED_DICE


def test_server_label_map_of_all_labels(server, hippocampus_dir):
    case = _test_cases(2)[1]
    r = infer(server.url, case, {"result_extension": ".nii.gz"}, output="image")
    assert r.status_code == 200, r.text[:500]
    labels, _ = read_volume(r.content, "labels.nii.gz")
    gt = np.asanyarray(nib.load(str(hippocampus_dir / "labelsTr" / f"{case}.nii.gz")).dataobj)
    dice = [_dice(labels == k, gt == k) for k in (1, 2)]
    assert np.mean(dice) >= MIN_MEAN_DICE - 0.05, dice


def test_hippocampus_sample_studies_are_held_out_cases(tmp_path, hippocampus_dir):  # reads ../shared (no download)
    dest = tmp_path / "studies"
    run = subprocess.run([sys.executable, str(REPO_ROOT / "sample-data" / "get_sample_data.py"), "--hippocampus",
                          "--offline", "--cases", "3", "--dest", str(dest)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{c}.nii.gz" for c in _test_cases(3))
    assert "held-out" in run.stdout
    assert nib.load(str(dest / f"{_test_cases(1)[0]}.nii.gz")).shape[0] > 10  # a real readable volume


def test_label_name_as_text_prompt_uses_the_trained_prompt(server):
    case = _test_cases(1)[0]
    res = infer(server.url, case, {"text_prompt": "Posterior Hippocampus"})
    assert res.status_code == 200, res.text[:500]
    body = res.json()
    assert body["label_names"] == {"posterior hippocampus": 2}  # the label's own value, never anterior's 1
    assert body["prompts"]["posterior hippocampus"].startswith("MRI images, hippocampus segmentation")
    assert body["model"]["mirror_axes"] == [0]  # a plain and a left-right mirrored pass, averaged
    free = infer(server.url, case, {"text_prompt": "hippocampus tail"}).json()
    assert free["prompts"] == {"hippocampus tail": "hippocampus tail"}  # other free text goes as typed
    assert free["label_names"] == {"hippocampus tail": 255}  # under "free text prompt", not a hippocampus part


def test_viewers_are_told_what_the_shipped_weights_are(server):
    from lib.model import read_checkpoint

    info = requests.get(f"{server.url}/info/", timeout=60).json()
    # the numbers the evaluation wrote into the checkpoint (checkpoints/README.md): the server averages the
    # left-right flip the weights were trained with (--conf mirror_axes auto), so the mirrored evaluation is shown
    extra = read_checkpoint(CHECKPOINT)["extra"]
    assert extra["training"]["config"]["flip_axes"] == [0] and extra["test_evaluation"]["mirror_axes"] == [0]
    assert info["models"]["refsam3d"]["mirror_axes"] == [0]
    dice = extra["test_evaluation"]["mean"]["dice"]
    assert 0.85 < dice < 1.0 and extra["test_evaluation"]["num_cases"] == 40
    assert dice != extra["test_evaluation_single_pass"]["mean"]["dice"]  # the one-pass number is not the one shown
    assert info["name"].endswith(f"trained on msd_hippocampus, test Dice {dice:.3f} (40 held-out cases)")
    assert info["models"]["refsam3d"]["description"].startswith(f"trained on msd_hippocampus, test Dice {dice:.3f}")
    meta = requests.get(f"{server.url}/model/info/refsam3d", timeout=60).json()
    assert meta["checksum"] == "SHA256:" + hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    assert meta["train_stats"]["iteration"] == extra["training"]["iteration"] and meta["weights"]["test"]["num_cases"] == 40
