"""The hippocampus benchmark's ``--reuse`` of a model whose checkpoint is gone: the stored row of the last run is
taken only when it was evaluated on the same test cases with the same test-time settings."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest

from conftest import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results" / "hippocampus.json"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_hippocampus", REPO_ROOT / "benchmarks" / "bench_hippocampus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split(previous: dict) -> dict:
    return {part: [{"id": i} for i in ids] for part, ids in previous["split"].items()}


def test_stored_baseline_row_is_reused_only_for_the_same_evaluation(bench):
    previous = json.loads(RESULTS.read_text())
    stored = next(r for r in previous["models"] if r["name"].startswith("DynUNet"))
    args = SimpleNamespace(largest_component=False, nsd_tolerance=1.0, augmentation="paper")
    mirror = tuple(stored["mirror_axes"])
    row = bench.stored_row(previous, RESULTS, "DynUNet", _split(previous), mirror, args)
    assert row["reused"] and previous["environment"]["date"] in row["stored_result"]
    assert row["evaluation"]["mean"] == stored["evaluation"]["mean"] and row["iterations"] == stored["iterations"]

    other_cases = _split(previous)
    other_cases["test"] = other_cases["test"][1:]
    for bad_split, bad_mirror, bad_args in [
        (other_cases, mirror, args),  # another test split
        (_split(previous), (), args),  # one pass instead of mirroring
        (_split(previous), mirror, SimpleNamespace(largest_component=False, nsd_tolerance=2.0, augmentation="paper")),
        (_split(previous), mirror, SimpleNamespace(largest_component=True, nsd_tolerance=1.0, augmentation="paper")),
    ]:
        with pytest.raises(SystemExit, match="other test"):
            bench.stored_row(previous, RESULTS, "DynUNet", bad_split, bad_mirror, bad_args)
    # trained with other augmentation: not a like-for-like baseline
    with pytest.raises(SystemExit, match="trained with --augmentation paper"):
        bench.stored_row(previous, RESULTS, "DynUNet", _split(previous), mirror,
                         SimpleNamespace(largest_component=False, nsd_tolerance=1.0, augmentation="nnunet"))
    with pytest.raises(SystemExit, match="no checkpoint"):
        bench.stored_row({"models": []}, RESULTS, "DynUNet", _split(previous), mirror, args)
    with pytest.raises(SystemExit, match="no checkpoint"):
        bench.stored_row(None, RESULTS, "DynUNet", _split(previous), mirror, args)


def test_split_seed_zero_reproduces_the_committed_split(bench, hippocampus_dir):
    """The documented results and the shipped checkpoint's test cases come from split seed 0 (``--split-seed``,
    separate from ``--seed``), and another split seed gives another split."""
    from lib.training import msd_datalist

    committed = json.loads((REPO_ROOT / "benchmarks" / "results" / "hippocampus_split.json").read_text())
    split = bench.make_split(msd_datalist(hippocampus_dir), test_fraction=0.2, val_fraction=0.0, seed=0)
    assert [d["id"] for d in split["test"]] == committed["test"]
    assert sorted(d["id"] for d in split["train"]) == sorted(committed["train"])
    other = bench.make_split(msd_datalist(hippocampus_dir), test_fraction=0.2, val_fraction=0.0, seed=1)
    assert [d["id"] for d in other["test"]] != committed["test"]  # the split seed really decides the split
