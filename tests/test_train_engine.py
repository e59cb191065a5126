"""The training engine the product uses (``lib.training.run_training``, called by ``POST /train/refsam3d`` and
``scripts/train.py``) really learns, and never publishes a model worse than the one it fine-tunes.

Real MSD hippocampus volumes, the real ``small`` RefSAM3D with the offline MiniLM text encoder, on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from server_process import REPO_ROOT

SHIPPED = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
SPLIT = REPO_ROOT / "benchmarks" / "results" / "hippocampus_split.json"
CROP = (32, 32, 32)
# a short run from scratch on one case (validated on that case: a learning check, not a generalisation one);
# measured: loss 1.71 -> ~0.58 and mean Dice 0.04 -> 0.31 in 40 iterations (~45 s on one loaded core)
EPOCHS = 40
MIN_DICE_GAIN = 0.2
MAX_LOSS_RATIO = 0.7  # mean loss of the last 5 iterations / mean of the first 5


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # run_training sets cfg.threads


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _setup(hippocampus_dir, case_ids):
    from lib.labelsets import load_label_set
    from lib.training import entries_from_label_set, msd_datalist

    label_set = load_label_set("msd_hippocampus")
    datalist = [d for d in msd_datalist(hippocampus_dir) if d["id"] in case_ids]
    assert len(datalist) == len(case_ids)
    return label_set, entries_from_label_set(label_set), datalist


def _validation(adapter, datalist, label_set) -> float:
    from lib.training.data import cached_dataset, val_transforms
    from lib.training.validation import validate

    return validate(adapter, cached_dataset(datalist, val_transforms("MR", label_set.target_spacing)))["mean_dice"]


def test_short_run_lowers_the_loss_and_raises_validation_dice(hippocampus_dir, tmp_path, one_thread):
    from lib.model import read_checkpoint
    from lib.training import PromptModelAdapter, TrainConfig, TrainData, TrainOutput, run_training
    from lib.training.runner import build_model

    label_set, entries, datalist = _setup(hippocampus_dir, ["hippocampus_004"])
    cfg = TrainConfig(max_epochs=EPOCHS, learning_rate=2e-3, batch_size=1, num_samples=2, crop_size=CROP,
                      augment=False, warmup_fraction=0.0, val_interval=1000, threads=1, log_interval_s=1000, seed=0)
    adapter = PromptModelAdapter(build_model("small", "minilm", seed=0), entries, cfg, roi_size=CROP, device="cpu")
    dice_before = _validation(adapter, datalist, label_set)

    losses: list[float] = []
    state = run_training(adapter, cfg, TrainData(datalist, datalist, "MR", label_set.target_spacing, CROP),
                         TrainOutput(tmp_path / "refsam3d_small.pt", stats_path=tmp_path / "train_stats.json"),
                         on_epoch=lambda s: losses.append(s["train"]["metrics"]["train_loss"]))
    assert state["iteration"] == EPOCHS and len(losses) == EPOCHS  # one crop pair per epoch
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    dice_after = state["eval"]["metrics"]["val_mean_dice"]
    print(f"\nengine: loss {first:.3f} -> {last:.3f}, validation mean Dice {dice_before:.3f} -> {dice_after:.3f}")
    assert last < MAX_LOSS_RATIO * first, f"training loss did not fall: {[round(v, 3) for v in losses]}"
    assert dice_after >= dice_before + MIN_DICE_GAIN, f"validation Dice {dice_before:.3f} -> {dice_after:.3f}"
    # what was published is that model (the stats file the server reports says the same)
    stored = read_checkpoint(tmp_path / "refsam3d_small.pt")["extra"]["training"]
    assert stored["val"]["mean_dice"] == pytest.approx(dice_after) and stored["iteration"] == EPOCHS
    assert json.loads((tmp_path / "train_stats.json").read_text())["best_metric"] == pytest.approx(dice_after)


def test_harmful_fine_tuning_does_not_replace_a_good_published_model(hippocampus_dir, tmp_path, one_thread):
    from lib.model import load_checkpoint
    from lib.training import PromptModelAdapter, TrainConfig, TrainData, TrainOutput, run_training
    from lib.training.runner import build_model

    cases = json.loads(SPLIT.read_text())["test"][:2]  # held out from the shipped model's training
    label_set, entries, datalist = _setup(hippocampus_dir, cases)
    published = tmp_path / "refsam3d_small.pt"
    shutil.copy(SHIPPED, published)
    good = _sha(published)

    # a learning rate 1000x too large, at full strength from the first step
    cfg = TrainConfig(max_epochs=2, learning_rate=1.0, batch_size=1, num_samples=1, crop_size=CROP, augment=False,
                      warmup_fraction=0.0, min_lr_fraction=1.0, threads=1, log_interval_s=1000, seed=0)
    model = build_model("small", "minilm", init=str(published))
    adapter = PromptModelAdapter(model, entries, cfg, roi_size=CROP, device="cpu")
    state = run_training(adapter, cfg, TrainData(datalist[:1], datalist[1:], "MR", label_set.target_spacing, CROP),
                         TrainOutput(published, fine_tunes_published=True))
    start = state["best_metric"]
    damaged = [h["val_mean_dice"] for h in state["history"]]
    print(f"\nharmful fine-tuning: published model {start:.3f}, after each epoch {damaged}")
    assert state["best_metric_epoch"] == 0 and start > 0.6  # the bar was the published model's own Dice ...
    assert max(damaged) < start - 0.1  # ... which the harmful run really fell below
    assert state["published"] is None
    assert _sha(published) == good, "a worse model replaced the published one"
    load_checkpoint(published, text_encoder=model.text_encoder)
