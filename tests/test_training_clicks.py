"""Simulated clicks (lib/training/clicks.py) on hand-made masks, and training with them end to end."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from model_fixtures import quiet_build, shared_tiny_text  # noqa: F401 (fixtures)


def _box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


# ----------------------------------------------------------------------------- click placement
def test_positive_click_at_the_centre_of_the_largest_miss():
    from lib.training.clicks import next_click

    target = _box((20, 20, 20), (2, 2, 2), (9, 9, 9)) | _box((20, 20, 20), (12, 12, 12), (15, 15, 15))
    pred = np.zeros_like(target)  # both missed: the 7^3 cube is the larger region
    click = next_click(pred, target)
    assert click.positive and click.position == (5, 5, 5) and click.region_size == 7**3
    pred = _box((20, 20, 20), (2, 2, 2), (9, 9, 9))  # the big one found: the small one is left
    click = next_click(torch.from_numpy(pred), torch.from_numpy(target))  # tensors work too
    assert click.positive and click.position == (13, 13, 13) and target[click.position]


def test_negative_click_inside_the_largest_false_alarm():
    from lib.training.clicks import next_click

    target = _box((20, 20, 20), (2, 2, 2), (6, 6, 6))  # 64 voxels
    false_alarm = _box((20, 20, 20), (10, 4, 4), (19, 16, 16))  # 9 x 12 x 12, bigger than any miss
    click = next_click(false_alarm | _box((20, 20, 20), (2, 2, 2), (4, 6, 6)), target)
    assert not click.positive and false_alarm[click.position] and not target[click.position]
    # farthest from the blob's boundary: 5 voxels, the middle of its short (9-voxel) axis
    assert click.position[0] == 14 and all(8 <= c <= 11 for c in click.position[1:])
    assert next_click(target, target) is None  # perfect: no click


def test_volume_border_counts_as_boundary():
    from lib.training.clicks import next_click

    target = _box((10, 10, 30), (0, 0, 0), (10, 10, 12))  # touches the border on five sides
    click = next_click(np.zeros_like(target), target)
    # without the border as boundary the farthest voxel would be at w = 0, 12 voxels from the only background
    assert 4 <= click.position[2] <= 7 and click.position[:2] in ((4, 4), (4, 5), (5, 4), (5, 5))


def test_ties_deterministic_with_a_seed():
    from lib.training.clicks import next_click

    target = _box((12, 12, 12), (2, 2, 2), (10, 10, 4))  # a slab: many voxels share the EDT maximum
    runs = [[next_click(np.zeros_like(target), target, random.Random(s)).position for _ in range(1)] for s in (7, 7)]
    assert runs[0] == runs[1]
    many = {next_click(np.zeros_like(target), target, random.Random(s)).position for s in range(20)}
    assert len(many) > 1 and all(target[p] for p in many)  # random among the interior maxima, always inside
    assert next_click(np.zeros_like(target), target).position == next_click(np.zeros_like(target), target).position


def test_modes_follow_the_fractions_and_never_click_only_on_empty_targets():
    from lib.training import TrainConfig
    from lib.training.clicks import CLICKS, TEXT, choose_modes

    target = torch.zeros(2, 400, 4, 4, 4)
    target[0, :, 1, 1, 1] = 1  # crop 0: every prompt present; crop 1: every target empty
    cfg = TrainConfig(click_text_only=0.4, click_text_and_clicks=0.4, click_only=0.2)
    modes = choose_modes(target, cfg, random.Random(0))
    assert modes == choose_modes(target, cfg, random.Random(0))
    present, empty = modes
    assert CLICKS not in empty and 0.1 < present.count(CLICKS) / 400 < 0.3 and 0.3 < present.count(TEXT) / 400 < 0.5
    assert set(choose_modes(target, TrainConfig(click_text_only=0, click_text_and_clicks=0, click_only=1),
                            random.Random(0))[0]) == {CLICKS}


# ----------------------------------------------------------------------------- a training step
@pytest.fixture(scope="module")
def small(shared_tiny_text):
    torch.manual_seed(0)
    return quiet_build("small", text_encoder=shared_tiny_text)


def _sample():
    image = torch.zeros(2, 1, 16, 16, 16)
    image[:, :, 3:10, 4:12, 5:11] = 1.0
    label = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    label[:, :, 3:10, 4:12, 5:11] = 1
    return image, label


def test_click_step_encodes_once_is_deterministic_and_trains_the_click_path(small, monkeypatch):
    from lib.training import TrainConfig
    from lib.training.clicks import click_training_logits

    image, label = _sample()
    target = torch.stack([label[:, 0] == 1, label[:, 0] == 2], dim=1).float()  # prompt 2 absent
    cfg = TrainConfig(click_text_only=0.0, click_text_and_clicks=0.5, click_only=0.5, click_max_rounds=3)
    calls = []
    encode = small.encode_image
    monkeypatch.setattr(small, "encode_image", lambda x: calls.append(1) or encode(x))
    small.train()
    logits, info = click_training_logits(small, image, ["a", "b"], target, cfg, random.Random(3))
    again, info2 = click_training_logits(small, image, ["a", "b"], target, cfg, random.Random(3))
    assert logits.shape == (2, 2, 16, 16, 16) and len(calls) == 2  # one encoding per step
    assert info == info2 and torch.equal(logits, again)  # same seed, same clicks, same answer
    assert info["modes"]["text"] == 0 and sum(info["modes"].values()) == 4
    small.zero_grad(set_to_none=True)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    pe = small.prompt_encoder
    assert pe.point_embeddings[1].weight.grad is not None and torch.count_nonzero(pe.point_embeddings[1].weight.grad)
    if info["click_rounds"] > 1:  # the previous mask fed back as the dense prompt gets gradient
        assert torch.count_nonzero(pe.mask_downscaling[-1].weight.grad) > 0
    assert small.image_encoder.patch_embed.proj.weight.grad is not None  # through the one encoding
    small.zero_grad(set_to_none=True)


def test_training_with_clicks_lowers_the_loss(shared_tiny_text):
    """Overfit one synthetic crop pair with the adapter's click-simulating loss (every mode drawn)."""
    from lib.training import PromptModelAdapter, TrainConfig
    from lib.training.prompts import LabelEntry

    torch.manual_seed(0)
    model = quiet_build("small", text_encoder=shared_tiny_text)
    cfg = TrainConfig(learning_rate=3e-3, click_max_rounds=2)
    assert cfg.clicks  # on by default
    adapter = PromptModelAdapter(model, [LabelEntry("box", 1, "box"), LabelEntry("other", 2, "other")], cfg,
                                 roi_size=(16, 16, 16), device="cpu", seed=0)
    opt = adapter.make_optimizer(cfg)
    image, label = _sample()
    losses, modes = [], {"text": 0, "text+clicks": 0, "clicks": 0}
    for _ in range(12):
        loss, info = adapter.training_loss(image, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        modes = {m: modes[m] + n for m, n in info["modes"].items()}
    print(f"\nclick training: loss {np.mean(losses[:3]):.3f} -> {np.mean(losses[-3:]):.3f}, modes {modes}")
    assert all(n > 0 for n in modes.values())
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
