"""Active learning units: uncertainty measures, ranking strategy and Dice scoring on a real LocalDatastore.

(The same strategies and scoring methods over REST, with a trained model, are in test_train_server.py.)
"""

from __future__ import annotations

import os
import shutil
import time
from types import SimpleNamespace
from typing import NamedTuple

import nibabel as nib
import numpy as np
import pytest
import torch

from lib.activelearning import (
    LabelDiceScoring,
    UncertaintyStrategy,
    build_scoring_methods,
    build_strategies,
    flip_disagreement,
    label_map_dice,
    mask_entropy,
    model_version,
)


def test_mask_entropy_and_flip_disagreement():
    region = torch.ones(2, 2, 2, dtype=torch.bool)
    assert mask_entropy(torch.full((1, 2, 2, 2), 0.5), region) == pytest.approx(1.0)  # 1 bit: unsure
    assert mask_entropy(torch.full((1, 2, 2, 2), 0.999), region) < 0.02  # sure
    assert mask_entropy(torch.zeros(1, 2, 2, 2), torch.zeros(2, 2, 2, dtype=torch.bool)) == 1.0  # nothing found
    a = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    a[0, :2] = True
    b = a.clone()
    assert flip_disagreement(a, b) == 0.0  # label 1 empty in both: skipped
    b[0, 1] = False  # half of label 0 lost: Dice 2*16/(32+16)
    assert flip_disagreement(a, b) == pytest.approx(1 - 32 / 48)


def test_label_map_dice_per_label():
    y = np.array([0, 1, 1, 2, 2, 0])
    p = np.array([0, 1, 0, 0, 0, 3])
    assert label_map_dice(p, y, {"a": 1, "b": 2, "c": 3, "d": 4}) == {"a": pytest.approx(2 / 3), "b": 0.0, "c": 0.0}
    # 3D maps whose labels sit in different, partly overlapping boxes: the same as counting voxels over the volume
    rng = np.random.default_rng(0)
    y3 = np.zeros((12, 10, 8), np.int32)
    y3[1:6, 2:8, 1:5], y3[7:11, 0:4, 3:8] = 1, 2
    p3 = np.roll(y3, (2, -1, 1), axis=(0, 1, 2)) * (rng.random(y3.shape) < 0.8)
    p3[0, 9, 7] = 3
    counted = {n: 2 * int(((p3 == k) & (y3 == k)).sum()) / int((p3 == k).sum() + (y3 == k).sum()) for n, k in
               (("a", 1), ("b", 2), ("c", 3))}
    assert label_map_dice(p3, y3, {"a": 1, "b": 2, "c": 3, "d": 4}) == pytest.approx(counted)


class FakeStore:
    """The datastore calls the strategies use."""

    def __init__(self, infos, labelled=()):
        self.infos = infos
        self.labelled = set(labelled)

    def get_unlabeled_images(self, label_tag=None, labels=None):
        return [k for k in self.infos if k not in self.labelled]

    def get_image_info(self, image_id):
        return self.infos[image_id]


def _task_config(tmp_path, published=True):
    path = tmp_path / "refsam3d_small.pt"
    if published:
        path.write_bytes(b"x")
    from lib.settings import AppSettings

    return SimpleNamespace(store=SimpleNamespace(published_path=path), settings=AppSettings(), label_set=None)


def test_uncertainty_strategy_ranks_current_scores_then_unscored(tmp_path):
    tc = _task_config(tmp_path)
    version = model_version(tc)
    now = int(time.time())
    infos = {
        "a": {"uncertainty": 0.2, "uncertainty_model": version},
        "b": {"uncertainty": 0.9, "uncertainty_model": version},
        "c": {"uncertainty": 0.95, "uncertainty_model": "older-weights"},  # stale score ranks after current ones
        "d": {},
        "e": {"uncertainty": 0.99, "uncertainty_model": version},  # labelled: never served
    }
    store = FakeStore(infos, labelled={"e"})
    strategy = UncertaintyStrategy(tc)
    assert strategy({"strategy": "uncertainty"}, store)["id"] == "b"
    infos["b"]["strategy"] = {"uncertainty": {"ts": now}}  # just served to someone
    assert strategy({"strategy": "uncertainty"}, store)["id"] == "a"
    infos["a"]["strategy"] = {"uncertainty": {"ts": now}}
    assert strategy({"strategy": "uncertainty"}, store)["id"] == "c"
    infos["c"]["strategy"] = {"uncertainty": {"ts": now}}
    assert strategy({"strategy": "uncertainty"}, store)["id"] == "d"
    # no scores at all (nothing trained yet): still answers, in name order
    assert strategy({"strategy": "uncertainty"}, FakeStore({"y": {}, "x": {}}))["id"] == "x"
    assert strategy({"strategy": "uncertainty"}, FakeStore({}, labelled=())) is None


def test_dice_scoring_on_a_local_datastore(tmp_path, hippocampus_dir):
    from monailabel.datastore.local import LocalDatastore

    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    (studies / "labels" / "original").mkdir(parents=True)
    for case in ("hippocampus_004", "hippocampus_006"):
        shutil.copy(hippocampus_dir / "imagesTr" / f"{case}.nii.gz", studies / f"{case}.nii.gz")
        shutil.copy(hippocampus_dir / "labelsTr" / f"{case}.nii.gz", studies / "labels" / "final" / f"{case}.nii.gz")
    img = nib.load(str(hippocampus_dir / "labelsTr" / "hippocampus_004.nii.gz"))
    arr = np.asanyarray(img.dataobj).astype(np.uint8)
    arr[arr == 1] = 2  # the model called everything posterior
    nib.save(nib.Nifti1Image(arr, img.affine), str(studies / "labels" / "original" / "hippocampus_004.nii.gz"))
    ds = LocalDatastore(str(studies), extensions=("*.nii.gz",), auto_reload=False)

    from lib.labelsets import load_label_set

    label_set = load_label_set("msd_hippocampus")
    result = LabelDiceScoring(label_set)({}, ds)
    assert set(result) == {"hippocampus_004"}
    per_label = ds.get_image_info("hippocampus_004")["dice_per_label"]
    n1 = int((np.asanyarray(img.dataobj) == 1).sum())
    n2 = int((np.asanyarray(img.dataobj) == 2).sum())
    assert per_label["anterior hippocampus"] == 0.0
    assert per_label["posterior hippocampus"] == pytest.approx(2 * n2 / (n1 + n2 + n2))
    assert ds.get_image_info("hippocampus_004")["dice"] == pytest.approx(np.mean(list(per_label.values())))

    from lib.settings import AppSettings

    tc = SimpleNamespace(label_set=label_set, store=SimpleNamespace(published_path=tmp_path / "none.pt"),
                         settings=AppSettings.from_conf({"label_set": "msd_hippocampus"}))
    assert set(build_strategies(tc)) == {"random", "first", "uncertainty"}
    assert set(build_scoring_methods(tc)) == {"dice", "uncertainty"}
    # uncertainty scoring leaves labelled studies alone (all are labelled here: nothing to do, no model needed)
    summary = build_scoring_methods(tc)["uncertainty"]({}, ds)
    assert summary["total"] == 0 and summary["executed"] == 0


class _Encoding(NamedTuple):
    """The fields the sliding-window code stores for one window (``lib.inference``)."""

    stages: list
    mask_features: torch.Tensor
    input_shape: tuple
    scaled_shape: tuple


class IntensityModel(torch.nn.Module):
    """A network whose probabilities are set by the image: p = sigmoid(gain * (intensity - 0.5)) for every prompt.

    After the MR pre-processing (0.5-99.5 percentiles -> [0, 1]) a two-valued image gives p ~ 0 or 1 (a confident
    model) and an image that is mostly mid-grey gives p = 0.5 (an undecided one)."""

    def __init__(self, gain: float = 40.0):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(gain), requires_grad=False)
        self.windows = 0

    def encode_text(self, prompts):
        return len(prompts)

    def encode_image(self, window):
        self.windows += 1
        return _Encoding([], window, tuple(window.shape[2:]), tuple(window.shape[2:]))

    def decode(self, encoding, num_prompts):
        logits = self.gain * (encoding.mask_features - 0.5)
        return logits.expand(-1, num_prompts, *logits.shape[2:])


def _controlled_studies(folder):
    """``x_ambiguous`` (mostly mid-grey) and ``a_confident`` (two flat halves) -- named so that a tie picks the wrong one."""
    folder.mkdir(parents=True)
    confident = np.zeros((24, 24, 24), np.float32)
    confident[12:] = 100.0
    ambiguous = np.full((24, 24, 24), 50.0, np.float32)
    ambiguous[:2], ambiguous[-2:] = 0.0, 100.0
    nib.save(nib.Nifti1Image(confident, np.eye(4)), str(folder / "a_confident.nii.gz"))
    nib.save(nib.Nifti1Image(ambiguous, np.eye(4)), str(folder / "x_ambiguous.nii.gz"))


def test_uncertainty_ranks_an_undecided_study_above_a_confident_one_and_skips_scored_ones(tmp_path):
    from monailabel.datastore.local import LocalDatastore

    from lib.activelearning import UncertaintyScoring
    from lib.settings import AppSettings

    _controlled_studies(tmp_path / "studies")
    ds = LocalDatastore(str(tmp_path / "studies"), extensions=("*.nii.gz",), auto_reload=False)
    model = IntensityModel().eval()
    published = tmp_path / "refsam3d_small.pt"
    published.write_bytes(b"weights v1")
    store = SimpleNamespace(published_path=published, get=lambda: (model, "v1"))
    settings = AppSettings.from_conf({"preset": "small", "label_set": "msd_hippocampus", "roi_size": "16",
                                      "sw_overlap": "0.25", "target_spacing": "1"})
    assert settings.modality == "MR" and settings.target_spacing == (1.0, 1.0, 1.0)
    tc = SimpleNamespace(label_set=settings.label_set, store=store, settings=settings)

    summary = UncertaintyScoring(tc)({}, ds)
    assert summary["executed"] == 2 and summary["skipped"] == 0
    scores = {i: ds.get_image_info(i)["uncertainty"] for i in ("a_confident", "x_ambiguous")}
    entropy = {i: ds.get_image_info(i)["uncertainty_entropy"] for i in scores}
    assert entropy["a_confident"] < 0.05 and entropy["x_ambiguous"] > 0.8, entropy
    assert scores["x_ambiguous"] > scores["a_confident"] + 0.3, scores
    assert UncertaintyStrategy(tc)({"strategy": "uncertainty"}, ds)["id"] == "x_ambiguous"

    # the same weights again: nothing is recomputed
    windows = model.windows
    again = UncertaintyScoring(tc)({}, ds)
    assert again["executed"] == 0 and again["skipped"] == 2 and model.windows == windows
    assert {i: ds.get_image_info(i)["uncertainty"] for i in scores} == scores
    # new weights published (the version is the file's mtime): every study is scored again
    os.utime(published, ns=(published.stat().st_atime_ns, published.stat().st_mtime_ns + 10**9))
    assert UncertaintyScoring(tc)({}, ds)["executed"] == 2 and model.windows > windows
