#!/usr/bin/env python
"""Compare two evaluations of the same cases, case by case (paired): is B really better than A?

Each input is an ``evaluation.json`` (``scripts/evaluate.py``), a benchmark's per-model evaluation
(``hippocampus_<model>.json``) or a benchmark report (``hippocampus.json``: the model named by ``--model``).
Prints a table per label and for the per-case mean over labels (means, B - A with a paired bootstrap 95 %
interval, cases won by each side, Wilcoxon signed-rank p) and writes ``comparison.{json,md,png}`` to ``--out``.

    .venv/bin/python scripts/compare.py benchmarks/results/hippocampus.json \\
        benchmarks/results/experiments/nnunet_augmentation/hippocampus.json --names paper nnunet --out results/compare
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "refsam3d"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="evaluation A (the reference)")
    p.add_argument("b", help="evaluation B (compared against A)")
    p.add_argument("--names", nargs=2, metavar=("A", "B"), help="names in the table and plot (default: the paths)")
    p.add_argument("--metric", default="dice", choices=["dice", "nsd", "hd95"])
    p.add_argument("--model", default="RefSAM3D", help="which model of a benchmark report (name prefix)")
    p.add_argument("--out", default="results/comparison")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from lib.comparison import compare_evaluations, comparison_markdown, load_evaluation, write_comparison

    try:
        a, b = load_evaluation(args.a, args.model), load_evaluation(args.b, args.model)
        cmp = compare_evaluations(a, b, metric=args.metric, names=args.names or (args.a, args.b))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"compare: {exc}") from None
    paths = write_comparison(cmp, args.out)
    print(comparison_markdown(cmp))
    print("written:", ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
