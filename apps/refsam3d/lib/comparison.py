"""Paired comparison of two evaluations of the same cases (two runs, two models, two settings).

Input: two results of :func:`lib.evaluation.evaluate` (``evaluation.json`` or a benchmark's per-model JSON).
For each label and for the per-case mean over labels: both means, the mean difference B - A with a paired
bootstrap 95 % interval, cases won by each side, and the two-sided Wilcoxon signed-rank p-value (scipy).
One run per setting says little when the difference is near run-to-run noise; this makes the size of a
difference and its uncertainty explicit. Written as JSON, Markdown and a PNG plot.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

LOWER_IS_BETTER = {"hd95"}
MEAN_OVER_LABELS = "mean over labels"


def load_evaluation(path: str | os.PathLike, model: str = "RefSAM3D") -> dict:
    """An ``evaluation.json``, or from a benchmark report (``hippocampus.json``) the evaluation of the first model
    whose name starts with ``model``."""
    result = json.loads(Path(path).read_text())
    if isinstance(result, dict) and "models" in result:
        found = [m["evaluation"] for m in result["models"] if m.get("name", "").startswith(model) and "evaluation" in m]
        if not found:
            names = [m.get("name") for m in result["models"]]
            raise ValueError(f"{path}: no evaluated model whose name starts with {model!r} (models: {names})")
        result = found[0]
    if not isinstance(result, dict) or "cases" not in result or "labels" not in result:
        raise ValueError(f"{path} is not an evaluation result (expected 'cases' and 'labels', as evaluate.py writes)")
    return result


def _values(case: dict, labels: Sequence[str], metric: str) -> dict[str, float]:
    """Finite per-label values of one case, plus their mean over ``labels`` when all are finite."""
    out = {}
    for label in labels:
        v = case["labels"].get(label, {}).get(metric)
        if v is not None and math.isfinite(float(v)):
            out[label] = float(v)
    if labels and all(label in out for label in labels):
        out[MEAN_OVER_LABELS] = float(np.mean([out[label] for label in labels]))
    return out


def paired_statistics(a: Sequence[float], b: Sequence[float], lower_is_better: bool = False,
                      n_bootstrap: int = 10000, seed: int = 0) -> dict:
    """Mean of each side, mean difference ``b - a`` with a paired bootstrap 95 % interval, wins, Wilcoxon p."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired statistics need the same, non-zero number of values on both sides")
    diff = b - a
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, diff.size, size=(n_bootstrap, diff.size))].mean(axis=1)  # [n_bootstrap]
    better_b = diff < 0 if lower_is_better else diff > 0
    better_a = diff > 0 if lower_is_better else diff < 0
    p = 1.0 if np.all(diff == 0) else float(wilcoxon(a, b, zero_method="wilcox").pvalue)
    return {"n": int(diff.size), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "mean_difference": float(diff.mean()),
            "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "wins_a": int(better_a.sum()), "wins_b": int(better_b.sum()), "ties": int((diff == 0).sum()),
            "wilcoxon_p": p}


def compare_evaluations(a: dict, b: dict, metric: str = "dice", names: Sequence[str] = ("A", "B")) -> dict:
    """Compare ``b`` against ``a`` case by case on the cases and labels both evaluated."""
    cases_a, cases_b = {c["id"]: c for c in a["cases"]}, {c["id"]: c for c in b["cases"]}
    common = [i for i in cases_a if i in cases_b]
    if not common:
        raise ValueError("the two evaluations have no case in common: compare runs evaluated on the same split")
    labels = [label for label in a["labels"] if label in b["labels"]]
    if not labels:
        raise ValueError(f"no label in common: {a['labels']} vs {b['labels']}")
    values = [(_values(cases_a[i], labels, metric), _values(cases_b[i], labels, metric)) for i in common]
    rows = {}
    for key in [*labels, MEAN_OVER_LABELS]:
        pairs = [(va[key], vb[key]) for va, vb in values if key in va and key in vb]
        if pairs:
            xa, xb = zip(*pairs)
            rows[key] = {**paired_statistics(xa, xb, lower_is_better=metric in LOWER_IS_BETTER),
                         "values_a": list(xa), "values_b": list(xb)}
    return {"metric": metric, "names": list(names), "labels": labels, "cases": common,
            "only_in_a": sorted(set(cases_a) - set(cases_b)), "only_in_b": sorted(set(cases_b) - set(cases_a)),
            "rows": rows}


def comparison_markdown(cmp: dict) -> str:
    name_a, name_b = cmp["names"]
    lines = [f"# {cmp['metric']}: {name_b} (B) vs {name_a} (A), {len(cmp['cases'])} paired cases", "",
             "| label | A | B | B - A | 95 % CI (bootstrap) | A better | B better | ties | Wilcoxon p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, r in cmp["rows"].items():
        lines.append(f"| {key} | {r['mean_a']:.4f} | {r['mean_b']:.4f} | {r['mean_difference']:+.4f} | "
                     f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] | {r['wins_a']} | {r['wins_b']} | {r['ties']} | "
                     f"{r['wilcoxon_p']:.3g} |")
    if cmp["only_in_a"] or cmp["only_in_b"]:
        lines += ["", f"Left out (evaluated by one side only): A {cmp['only_in_a']}, B {cmp['only_in_b']}"]
    lines += ["", "A = " + name_a, "B = " + name_b]
    return "\n".join(lines) + "\n"


def plot_comparison(cmp: dict, path: str | os.PathLike) -> None:
    """One scatter per label (and the mean over labels): each case's value under A (x) against B (y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(cmp["rows"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 5.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        r = cmp["rows"][key]
        xa, xb = np.asarray(r["values_a"]), np.asarray(r["values_b"])
        lo, hi = float(min(xa.min(), xb.min())), float(max(xa.max(), xb.max()))
        pad = 0.02 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1)
        ax.scatter(xa, xb, s=14, alpha=0.8)
        ax.set_xlabel(f"A: {cmp['names'][0]}", fontsize=8)
        ax.set_ylabel(f"B: {cmp['names'][1]}", fontsize=8)
        ax.set_title(f"{key}\nB - A = {r['mean_difference']:+.4f} (p = {r['wilcoxon_p']:.2g})", fontsize=9)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{cmp['metric']} per case ({len(cmp['cases'])} cases)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_comparison(cmp: dict, out_dir: str | os.PathLike, stem: str = "comparison") -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(cmp, indent=1))
    paths["md"].write_text(comparison_markdown(cmp))
    plot_comparison(cmp, paths["png"])
    return {k: str(v) for k, v in paths.items()}
