"""Unit tests of the training engine: label map -> prompt sampling, loss, options, schedule, splits."""

from __future__ import annotations

import random

import pytest
import torch

from lib.training import (
    LabelEntry,
    LinearSchedule,
    PromptDiceCELoss,
    TrainConfig,
    entries_from_dict,
    label_map_to_binary,
    sample_prompts,
    split_datalist,
)
from lib.training.prompts import select_entries

ENTRIES = [LabelEntry("liver", 1, "CT, liver"), LabelEntry("spleen", 2, "CT, spleen"),
           LabelEntry("kidney", 5, "CT, kidney"), LabelEntry("aorta", 7, "CT, aorta")]


def _label_batch():
    lab = torch.zeros(2, 1, 6, 6, 6)
    lab[0, 0, :2] = 1  # liver in crop 0
    lab[1, 0, 3:, :2] = 5  # kidney in crop 1
    lab[1, 0, 5, 5, 5] = 1  # one liver voxel in crop 1
    return lab


def test_all_labels_present_and_absent_with_empty_targets():
    lab = _label_batch()
    prompts, target, names = sample_prompts(lab, ENTRIES, rng=random.Random(0))
    assert sorted(names) == sorted(e.name for e in ENTRIES)
    assert target.shape == (2, 4, 6, 6, 6) and target.dtype == torch.float32
    for k, name in enumerate(names):
        entry = next(e for e in ENTRIES if e.name == name)
        assert prompts[k] == entry.prompt
        assert torch.equal(target[:, k], (lab[:, 0] == entry.index).float())
    # spleen (2) and aorta (7) are absent from both crops: all-zero targets ("it is not here")
    for absent in ("spleen", "aorta"):
        assert target[:, names.index(absent)].sum() == 0
    # kidney is present in crop 1 only: empty target for crop 0, non-empty for crop 1
    k = names.index("kidney")
    assert target[0, k].sum() == 0 and target[1, k].sum() == 3 * 2 * 6


def test_max_prompts_keeps_an_absent_label_and_prefers_present_ones():
    lab = _label_batch()  # present: liver, kidney; absent: spleen, aorta
    for seed in range(20):
        prompts, target, names = sample_prompts(lab, ENTRIES, max_prompts=2, min_absent=1, rng=random.Random(seed))
        assert len(prompts) == 2 and target.shape[1] == 2
        present = [n for n in names if n in ("liver", "kidney")]
        absent = [n for n in names if n in ("spleen", "aorta")]
        assert len(present) == 1 and len(absent) == 1
        assert target[:, names.index(absent[0])].sum() == 0
    prompts, _, names = sample_prompts(lab, ENTRIES, max_prompts=3, min_absent=1, rng=random.Random(1))
    assert {"liver", "kidney"} <= set(names) and len(names) == 3


def test_negative_prompts_get_empty_targets_and_never_duplicate_the_set():
    lab = _label_batch()
    prompts, target, names = sample_prompts(lab, ENTRIES, negative_prompts=["brain", "CT, liver"],
                                            negative_prompts_per_step=2, rng=random.Random(0))
    assert "brain" in prompts and prompts.count("CT, liver") == 1
    assert target[:, prompts.index("brain")].sum() == 0


def test_entries_and_label_map_helpers(tmp_path):
    from lib.labelsets import load_label_set
    from lib.training import entries_from_label_set

    ls = load_label_set("msd_hippocampus")
    entries = entries_from_label_set(ls)
    assert [(e.name, e.index) for e in entries] == [("anterior hippocampus", 1), ("posterior hippocampus", 2)]
    assert entries[0].prompt == ls.prompts["anterior hippocampus"]
    assert [e.name for e in entries_from_label_set(ls, ["posterior hippocampus"])] == ["posterior hippocampus"]
    with pytest.raises(ValueError, match="not in the label set"):
        select_entries(entries, ["liver"])
    lab = torch.tensor([[[[0, 1], [2, 2]]]])
    masks = label_map_to_binary(lab, entries)
    assert masks.shape == (2, 1, 2, 2) and int(masks[0].sum()) == 1 and int(masks[1].sum()) == 2
    assert [e.index for e in entries_from_dict({"b": 3, "a": 1, "background": 0})] == [1, 3]


def test_loss_dice_only_on_nonempty_targets_and_bce_pushes_absent_to_empty():
    loss_fn = PromptDiceCELoss()
    target = torch.zeros(1, 2, 4, 4, 4)
    target[0, 0, :2] = 1
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert float(loss_fn(perfect, target)) < 1e-3
    # a wrong mask for the absent prompt is penalised (by the cross-entropy)
    wrong = perfect.clone()
    wrong[0, 1] = 20.0
    assert float(loss_fn(wrong, target)) > 1.0
    # all targets empty: no NaN, only BCE
    empty = torch.zeros(1, 2, 4, 4, 4)
    assert torch.isfinite(loss_fn(torch.full_like(empty, -20.0), empty))
    logits = torch.zeros(1, 2, 4, 4, 4, requires_grad=True)
    loss_fn(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_train_config_from_viewer_request():
    cfg = TrainConfig.from_mapping({"max_epochs": "3", "crop_size": "32,48,32", "learning_rate": "0.002",
                                    "labels": "all", "augment": "false", "device": ["cpu", "cuda"],
                                    "train_batch_size": 4, "unknown_key": 1, "flip_axes": "0,1"})
    assert cfg.max_epochs == 3 and cfg.crop_size == (32, 48, 32) and cfg.learning_rate == 0.002
    assert cfg.labels is None and cfg.augment is False and cfg.device == "cpu" and cfg.batch_size == 4
    assert cfg.flip_axes == (0, 1)
    assert TrainConfig.from_mapping({"crop_size": "48"}).crop_size == (48, 48, 48)
    assert TrainConfig.from_mapping({"labels": "liver, spleen"}).labels == ["liver", "spleen"]
    with pytest.raises(ValueError):
        TrainConfig.from_mapping({"val_split": 1.5})


@pytest.mark.parametrize("profile", ["paper", "nnunet"])
def test_augmentation_profiles_keep_labels_and_change_images(profile):
    from monai.transforms import Compose

    from lib.training.data import augmentations

    image = torch.rand(1, 24, 24, 24)
    label = torch.zeros(1, 24, 24, 24)
    label[:, 8:16, 8:16, 8:16] = 2.0
    chain = Compose(augmentations((0,), profile))
    chain.set_random_state(0)
    changed = 0
    for _ in range(20):
        out = chain({"image": image.clone(), "label": label.clone()})
        assert out["image"].shape == image.shape and out["label"].shape == label.shape
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 2.0}  # nearest for labels: no new classes
        changed += not torch.equal(torch.as_tensor(out["image"]), image)
    assert changed >= 10, f"{profile}: only {changed}/20 samples augmented"


def test_flip_profile_mirrors_image_and_label_together_and_nothing_else():
    from monai.transforms import Compose

    from lib.training.data import augmentations

    image = torch.rand(1, 24, 24, 24)
    label = torch.zeros(1, 24, 24, 24)
    label[:, 2:10, 8:16, 8:16] = 1.0  # off-centre along axis 0, so a flip moves it
    chain = Compose(augmentations((0,), "flip"))
    chain.set_random_state(0)
    kinds = set()
    for _ in range(20):
        out = chain({"image": image.clone(), "label": label.clone()})
        img, lab = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        if torch.equal(img, image):
            assert torch.equal(lab, label)
            kinds.add("as is")
        else:
            assert torch.equal(img, image.flip(1)) and torch.equal(lab, label.flip(1)), "only a left-right flip of both"
            kinds.add("flipped")
    assert kinds == {"as is", "flipped"}


def test_augmentation_profile_is_validated():
    assert TrainConfig.from_mapping({"augmentation": ["nnunet", "paper"]}).augmentation == "nnunet"  # viewer list
    with pytest.raises(ValueError, match="augmentation must be one of paper, nnunet, flip"):
        TrainConfig.from_mapping({"augmentation": "heavy"})


def test_linear_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = LinearSchedule(opt, 1e-3, warmup_fraction=0.1)
    lrs = [s.step(p) for p in (0.0, 0.05, 0.1, 0.55, 1.0)]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1e-3)
    assert lrs[3] == pytest.approx(0.5e-3) and lrs[4] == 0.0
    assert opt.param_groups[0]["lr"] == 0.0


def test_split_is_deterministic_and_disjoint():
    items = [{"image": f"/x/case_{i:03d}.nii.gz", "label": f"/y/case_{i:03d}.nii.gz"} for i in range(20)]
    tr, va = split_datalist(items, 0.2, seed=3)
    tr2, va2 = split_datalist(list(reversed(items)), 0.2, seed=3)
    assert [d["id"] for d in va] == [d["id"] for d in va2] and len(va) == 4 and len(tr) == 16
    assert not {d["id"] for d in tr} & {d["id"] for d in va}
    assert split_datalist(items[:1], 0.2)[1] == []  # one case: nothing to validate on
    assert len(split_datalist(items[:3], 0.2)[1]) == 1


@pytest.mark.parametrize("script", ["scripts/train.py", "scripts/evaluate.py", "scripts/compare.py",
                                    "benchmarks/bench_hippocampus.py"])
def test_command_help_needs_no_torch(script):
    """``--help`` lists the options (augmentation choices from ``lib.training.config``) without importing torch."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    probe = ("import runpy, sys\n"
             f"sys.argv = [{script!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({script!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print('TORCH_LOADED' if 'torch' in sys.modules else 'TORCH_FREE')\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and out.stdout.strip().endswith("TORCH_FREE"), out.stdout[-500:] + out.stderr
    if script in ("scripts/train.py", "benchmarks/bench_hippocampus.py"):
        assert "{paper,nnunet,flip}" in out.stdout  # the choices come from TrainConfig's list
