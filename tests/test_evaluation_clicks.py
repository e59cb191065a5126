"""``scripts/evaluate.py --clicks N [--no-text]`` (lib/evaluation_clicks.py) on real held-out hippocampus cases
with the shipped checkpoint; the protocol's bookkeeping (NoC) on hand-made curves."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from server_process import REPO_ROOT

CHECKPOINT = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
SPLIT = REPO_ROOT / "benchmarks" / "results" / "hippocampus_split.json"
LABELS = {"anterior hippocampus", "posterior hippocampus"}


def test_noc_counts_clicks_and_never_is_n_plus_one():
    from lib.evaluation_clicks import noc

    assert noc([0.80, 0.86, 0.91], 0.85, first_click=0, n_clicks=2) == 1
    assert noc([0.92, 0.95], 0.90, first_click=0, n_clicks=1) == 0  # the text alone is enough
    assert noc([0.80, 0.86, 0.91], 0.90, first_click=1, n_clicks=3) == 3  # no text: the first entry is click 1
    assert noc([0.5, 0.6, 0.7, 0.8], 0.85, first_click=0, n_clicks=3) == 4


def _run(tmp_path, data, name, *extra):
    out = tmp_path / name
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--checkpoint", str(CHECKPOINT),
           "--data", str(data), "--split-file", str(SPLIT),
           "--part", "test", "--max-cases", "2", "--out", str(out), "--no-progress", "--clicks", "2", *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((out / "clicks.json").read_text()), out


def test_evaluate_clicks_writes_curves_noc_and_clicks(tmp_path, hippocampus_dir):
    result, out = _run(tmp_path, hippocampus_dir, "text")
    assert result["num_cases"] == 2 and result["clicks"] == [0, 1, 2] and result["protocol"]["text"] is True
    assert result["protocol"]["mirror_axes"] == [0]  # by default decoded as the server does (the weights' flips)
    assert set(result["per_label"]) == LABELS
    for case in result["cases"]:
        for name, m in case["labels"].items():
            assert len(m["dice"]) == 3 and all(0.0 <= d <= 1.0 for d in m["dice"])
            assert m["noc90"] == next((i for i, d in enumerate(m["dice"]) if d >= 0.9), 3)
            assert len(m["clicks"]) <= 2 and all(len(c) == 4 for c in m["clicks"])
    # the text answer (click 0) is the shipped checkpoint's: it segments (0.891 mean on the 40 test cases)
    assert result["mean"]["dice_mean"][0] > 0.8
    rows = list(csv.DictReader(open(out / "clicks.csv")))
    assert len(rows) == 2 * 2 * 3 + 2 * 3 and {r["label"] for r in rows} == LABELS
    assert (out / "clicks.png").stat().st_size > 10_000


def test_evaluate_clicks_alone(tmp_path, hippocampus_dir):
    result, out = _run(tmp_path, hippocampus_dir, "no_text", "--no-text")
    assert result["clicks"] == [1, 2] and result["protocol"]["text"] is False
    for case in result["cases"]:
        for m in case["labels"].values():
            assert len(m["dice"]) == 2 and m["clicks"][0][3] is True  # the first click: positive, inside the target
            assert 1 <= m["noc85"] <= 3
    assert (out / "clicks.png").is_file() and (out / "clicks.csv").is_file()


def test_oracle_fix_corrects_the_clicked_region_or_a_ball():
    """The oracle's two answers on a hand-made error: the whole connected error region, or only within R voxels."""
    from lib.evaluation_clicks import oracle_fix, parse_oracle
    from lib.training.clicks import next_click

    gt = torch.zeros(20, 20, 20, dtype=torch.bool)
    gt[2:18, 2:18, 2:18] = True
    pred = gt.clone()
    pred[2:18, 2:18, 14:18] = False  # a miss of 16x16x4 voxels, the largest error
    pred[0, 0, 0] = True  # a false alarm of one voxel
    click = next_click(pred, gt)
    assert click.positive and click.region_size == 16 * 16 * 4
    region = oracle_fix(pred, gt, click, parse_oracle("region"))
    assert torch.equal(region | gt, region) and int((region != gt).sum()) == 1  # only the false alarm is left
    ball = oracle_fix(pred, gt, click, parse_oracle("ball:3"))
    fixed = (ball != pred).nonzero().float()
    assert 0 < len(fixed) < 16 * 16 * 4 and float(((fixed - torch.tensor(click.position)) ** 2).sum(1).max()) <= 9
    assert parse_oracle(None) is None
    for bad in ("ball", "ball:0", "ball:x", "box:3"):
        with pytest.raises(ValueError, match="region' or 'ball:R"):
            parse_oracle(bad)


def test_evaluate_clicks_with_an_oracle(tmp_path, hippocampus_dir):
    """``--click-oracle region``: the clicks never make the Dice worse, and the text answer is the model's."""
    model_run, _ = _run(tmp_path, hippocampus_dir, "text")
    result, out = _run(tmp_path, hippocampus_dir, "oracle", "--click-oracle", "region")
    assert result["protocol"]["oracle"] == "region"
    for case, model_case in zip(result["cases"], model_run["cases"]):
        for name, m in case["labels"].items():
            assert m["dice"][0] == model_case["labels"][name]["dice"][0]
            assert all(b >= a for a, b in zip(m["dice"], m["dice"][1:])) and m["dice"][-1] > m["dice"][0]
    assert (out / "clicks.png").is_file()
