"""The engine's handlers end a run cleanly: at ``max_iterations`` and at the wall-clock budget the trainer is
terminated (no exception), validated once more, published, and ``train_stats.json`` says why it stopped.

A small real 3D CNN adapter (one conv per label, sigmoid) trains on real MSD hippocampus crops, so the
handlers are tested without RefSAM3D's cost; RefSAM3D runs through the same engine in test_train_engine.py.
"""

from __future__ import annotations

import json

import pytest
import torch

CROP = (16, 16, 16)


def _tiny_adapter(entries):
    from lib.training import SegmentationAdapter
    from lib.training.prompts import label_map_to_binary

    class TinyAdapter(SegmentationAdapter):
        def __init__(self):
            torch.manual_seed(0)
            self.entries = list(entries)
            self.model = torch.nn.Conv3d(1, len(self.entries), 3, padding=1)
            self.loss_fn = torch.nn.BCEWithLogitsLoss()
            self.saved: list[dict] = []
            self.to("cpu")

        def parameters_to_optimise(self):
            return list(self.model.parameters())

        def training_loss(self, image, label):  # [B,1,*crop] -> [B,K,*crop]
            target = torch.stack([label_map_to_binary(lab, self.entries) for lab in label]).float()
            return self.loss_fn(self.model(image), target), {}

        def segment(self, image):  # [1,1,*spatial] -> [K,*spatial]
            return self.model(image)[0] > 0

        def save(self, path, extra=None):
            self.saved.append(extra or {})
            torch.save({"state_dict": self.model.state_dict(), "extra": extra or {}}, path)

        def describe(self):
            return {"model": "tiny conv"}

    return TinyAdapter()


@pytest.fixture
def setup(hippocampus_dir):
    from lib.labelsets import load_label_set
    from lib.training import entries_from_label_set, msd_datalist

    label_set = load_label_set("msd_hippocampus")
    return label_set, entries_from_label_set(label_set), msd_datalist(hippocampus_dir)[:3]


def _run(adapter, label_set, train, val, tmp_path, **options):
    from lib.training import TrainConfig, TrainData, TrainOutput, run_training

    cfg = TrainConfig(batch_size=1, num_samples=1, crop_size=CROP, augment=False, threads=1, log_interval_s=0,
                      val_interval=1000, clicks=False, **options)
    state = run_training(adapter, cfg, TrainData(train, val, "MR", label_set.target_spacing, CROP),
                         TrainOutput(tmp_path / "model.pt", stats_path=tmp_path / "train_stats.json"))
    return state, json.loads((tmp_path / "train_stats.json").read_text())


def test_max_iterations_ends_the_run_cleanly_validated_and_published(setup, tmp_path):
    label_set, entries, data = setup
    adapter = _tiny_adapter(entries)
    state, stats = _run(adapter, label_set, data[:2], data[2:], tmp_path, max_epochs=100, max_iterations=5)
    assert stats["stop_reason"] == "max_iterations" and stats["status"] == "DONE"
    assert stats["iteration"] == 5 and stats["epoch"] == 3  # 2 steps per epoch: stopped in the 3rd
    # validated once, at the end (val_interval 1000), and that model published with its iteration
    assert [h["iteration"] for h in stats["history"]] == [5] and stats["best_metric_epoch"] == 3
    assert len(adapter.saved) == 1 and adapter.saved[0]["training"]["iteration"] == 5
    assert (tmp_path / "model.pt").is_file() and stats["published_epoch"] == 3
    for key in ("total_epochs", "total_time", "iterations_per_s", "eta", "train", "eval", "best_metric"):
        assert key in stats, key  # what MONAI Label's /train/ and the viewers read
    assert "current_time" not in stats and stats["eta_s"] == 0
    assert stats["train"]["metrics"]["train_loss"] > 0 and state["iteration"] == 5


def test_wall_clock_budget_terminates_and_publishes_without_validation(setup, tmp_path):
    label_set, entries, data = setup
    adapter = _tiny_adapter(entries)
    state, stats = _run(adapter, label_set, data, [], tmp_path, max_epochs=100000, max_minutes=0.1)  # 6 s
    assert stats["stop_reason"] == "time_budget" and stats["status"] == "DONE"
    assert 0 < stats["iteration"] < 100000 * 3 and stats["elapsed_s"] < 60
    assert stats["history"] == [] and stats["published_without_validation"] is True
    assert adapter.saved and adapter.saved[-1]["training"]["iteration"] == stats["iteration"]
    assert stats["lr"] < 0.1 * 1e-4  # the schedule ran on wall-clock progress down to ~0 at the budget
