"""Paired comparison of two evaluations (``lib.comparison``, ``scripts/compare.py``) on hand-made results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from lib.comparison import MEAN_OVER_LABELS, compare_evaluations, load_evaluation, paired_statistics

LABELS = ["anterior hippocampus", "posterior hippocampus"]


def _evaluation(values: dict[str, list[float]], metric: str = "dice", ids=None) -> dict:
    """An evaluation result as ``lib.evaluation.evaluate`` writes it, with the given per-label values per case."""
    n = len(next(iter(values.values())))
    ids = ids or [f"case_{i:03d}" for i in range(n)]
    return {"labels": list(values), "cases": [
        {"id": ids[i], "labels": {label: {metric: values[label][i]} for label in values}} for i in range(n)]}


def test_paired_statistics_by_hand():
    a = [0.80, 0.85, 0.90, 0.70]
    b = [0.82, 0.84, 0.95, 0.70]  # differences +0.02, -0.01, +0.05, 0
    s = paired_statistics(a, b)
    assert s["mean_difference"] == pytest.approx(0.015)
    assert (s["wins_a"], s["wins_b"], s["ties"]) == (1, 2, 1)
    assert s["ci95"][0] <= s["mean_difference"] <= s["ci95"][1]
    lower = paired_statistics(a, b, lower_is_better=True)  # e.g. HD95: the smaller value wins
    assert (lower["wins_a"], lower["wins_b"]) == (2, 1)
    with pytest.raises(ValueError):
        paired_statistics([0.5], [0.5, 0.6])


def test_consistent_gain_is_significant_and_identical_runs_are_not():
    base = [0.80 + 0.01 * i for i in range(12)]
    a = _evaluation({LABELS[0]: base, LABELS[1]: base[::-1]})
    b = _evaluation({LABELS[0]: [v + 0.01 for v in base], LABELS[1]: [v + 0.03 for v in base[::-1]]})
    cmp = compare_evaluations(a, b, names=("old", "new"))
    assert cmp["rows"][LABELS[0]]["mean_difference"] == pytest.approx(0.01)
    mean_row = cmp["rows"][MEAN_OVER_LABELS]
    assert mean_row["mean_difference"] == pytest.approx(0.02) and mean_row["wins_b"] == 12
    assert mean_row["wilcoxon_p"] < 0.01 and mean_row["ci95"][0] > 0
    same = compare_evaluations(a, a)["rows"][MEAN_OVER_LABELS]
    assert same["mean_difference"] == 0 and same["wilcoxon_p"] == 1.0 and same["ties"] == 12


def test_only_common_cases_and_finite_values_are_paired():
    a = _evaluation({LABELS[0]: [0.9, 0.8, 0.7], LABELS[1]: [0.9, float("nan"), 0.7]}, ids=["x", "y", "z"])
    b = _evaluation({LABELS[0]: [0.95, 0.85], LABELS[1]: [0.9, 0.9]}, ids=["y", "x"])
    cmp = compare_evaluations(a, b)
    assert cmp["cases"] == ["x", "y"] and cmp["only_in_a"] == ["z"] and cmp["only_in_b"] == []
    assert cmp["rows"][LABELS[0]]["values_a"] == [0.9, 0.8] and cmp["rows"][LABELS[0]]["values_b"] == [0.85, 0.95]
    assert cmp["rows"][LABELS[1]]["n"] == 1  # case y has no finite value in A
    assert cmp["rows"][MEAN_OVER_LABELS]["n"] == 1
    with pytest.raises(ValueError, match="no case in common"):
        compare_evaluations(a, _evaluation({LABELS[0]: [0.5]}, ids=["other"]))


def test_compare_command_writes_reports_from_a_benchmark_report(tmp_path):
    """The command reads a benchmark report (the model picked by name) and a plain evaluation file."""
    a = _evaluation({LABELS[0]: [0.8, 0.9, 0.85], LABELS[1]: [0.7, 0.75, 0.8]})
    b = _evaluation({LABELS[0]: [0.82, 0.91, 0.86], LABELS[1]: [0.72, 0.74, 0.83]})
    report = tmp_path / "hippocampus.json"
    report.write_text(json.dumps({"models": [{"name": "DynUNet (nnU-Net-like)", "evaluation": b},
                                             {"name": "RefSAM3D small", "evaluation": a}]}))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert load_evaluation(report)["cases"] == a["cases"]
    out = tmp_path / "cmp"
    run = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "compare.py"), str(report), str(tmp_path / "b.json"),
                          "--names", "run A", "run B", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "run B (B) vs run A (A), 3 paired cases" in run.stdout
    written = json.loads((out / "comparison.json").read_text())
    assert written["rows"][LABELS[0]]["mean_difference"] == pytest.approx((0.02 + 0.01 + 0.01) / 3)
    assert (out / "comparison.png").stat().st_size > 10_000 and (out / "comparison.md").is_file()
    bad = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "compare.py"), str(report), str(report),
                          "--model", "nnU-Net", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "no evaluated model whose name starts with 'nnU-Net'" in bad.stderr
