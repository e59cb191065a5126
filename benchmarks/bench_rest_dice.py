#!/usr/bin/env python3
"""The server's own answers, scored (prints numbers; not a test): Dice over REST on held-out hippocampus cases.

Starts the real ``monailabel start_server`` with a checkpoint over the test cases of the split and scores what it
sends back (NIfTI read with nibabel, MONAI's ``compute_dice`` against the manual label), one server per
``--mirror-axes`` value (``auto``: the weights' training flips, the default; ``none``: one pass):

* text: each case's label map of every label (``POST /infer/refsam3d``, a viewer's auto-segmentation);
* ``--clicks N``: the annotator of ``scripts/evaluate.py --clicks`` over REST, as OHIF's Point Prompts sends it.
  Per case and label: the class prompt's answer (``label_prompt``), then N clicks, each at the interior point of
  the largest error region of the last answer (``lib.training.clicks.next_click``, in the image's own voxel grid),
  sent to ``refsam3d_clicks`` with every click so far (the segment's clicks, then the background ones,
  ``point_labels``, ``label_prompt``); ``--no-text``: clicks alone (``clicks_only``, the first at the target's
  interior). Dice after each answer and NoC@90, to compare with the protocol's numbers.

    .venv/bin/python benchmarks/bench_rest_dice.py [--mirror-axes auto none] [--clicks 5 [--no-text]]
        [--max-cases 40] [--json out.json] [--png curves.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "apps" / "refsam3d"))
from app_fixtures import parse_all, read_volume  # noqa: E402
from server_process import MonaiLabelServer  # noqa: E402

HIPPOCAMPUS = REPO.parent / "shared" / "data" / "msd-hippocampus"
CHECKPOINT = REPO / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
SPLIT = REPO / "benchmarks" / "results" / "hippocampus_split.json"
LABELS = {"anterior hippocampus": 1, "posterior hippocampus": 2}
NOC_DICE = 0.90


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    from monai.metrics import compute_dice

    p, g = (torch.as_tensor(a)[None, None].float() for a in (pred, gt))
    return float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])


def answer(url: str, model: str, case: str, params: dict) -> np.ndarray:
    """The label map the server sends for ``params`` (``output=all``, as OHIF asks)."""
    r = requests.post(f"{url}/infer/{model}", params={"image": case, "output": "all"},
                      data={"params": json.dumps({"result_extension": ".nii.gz", **params})}, timeout=600)
    if r.status_code != 200:
        raise RuntimeError(f"{model} {case}: {r.status_code} {r.text[:300]}")
    _, data, name = parse_all(r)
    return read_volume(data, name)[0]


def text_dice(url: str, case: str, gt: np.ndarray) -> dict:
    pred = answer(url, "refsam3d", case, {})
    return {name: dice(pred == v, gt == v) for name, v in LABELS.items()}


def click_curve(url: str, case: str, gt: np.ndarray, value: int, n_clicks: int, use_text: bool) -> dict:
    """Dice after the class prompt (with text) and after each click, the clicks, NoC@90 (N + 1: never)."""
    from lib.training.clicks import next_click

    target = gt == value
    clicks: list[tuple[list[int], int]] = []
    pred = answer(url, "refsam3d", case, {"label_prompt": [value]}) == value if use_text else np.zeros_like(target)
    curve = [dice(pred, target)] if use_text else []
    for _ in range(n_clicks):
        click = next_click(pred, target)
        if click is None:  # a perfect answer: nothing left to click
            curve.append(curve[-1])
            continue
        clicks.append(([int(c) for c in click.position], int(click.positive)))
        ordered = [c for c in clicks if c[1] == 1] + [c for c in clicks if c[1] == 0]  # OHIF: segment's, then bg
        pred = answer(url, "refsam3d_clicks", case, {
            "points": [p for p, _ in ordered], "point_labels": [lbl for _, lbl in ordered], "label_prompt": [value],
            "clicks_only": not use_text, "text_prompt": "", "threshold": 0.5}) == value
        curve.append(dice(pred, target))
    first = 0 if use_text else 1
    noc = next((i + first for i, d in enumerate(curve) if d >= NOC_DICE), n_clicks + 1)
    return {"dice": curve, "clicks": clicks, "noc90": noc}


def score_server(mirror_axes: str, cases: list[str], work: Path, checkpoint: Path, n_clicks: int,
                 use_text: bool) -> dict:
    model_dir = work / f"model_{mirror_axes}"
    model_dir.mkdir(exist_ok=True)
    shutil.copy(checkpoint, model_dir / "refsam3d_small.pt")
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": "minilm", "use_pretrained_model": "false",
            "model_dir": str(model_dir), "mirror_axes": mirror_axes, "skip_trainers": "true", "skip_strategies": "true"}
    per_case, seconds = [], []
    with MonaiLabelServer(work / "studies", conf, work / f"server_{mirror_axes}.log") as server:
        for i, case in enumerate(cases):
            gt = np.asanyarray(nib.load(str(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz")).dataobj)
            start = time.perf_counter()
            if n_clicks:
                rec = {name: click_curve(server.url, case, gt, v, n_clicks, use_text) for name, v in LABELS.items()}
                shown = {n: f"{r['dice'][0]:.3f} -> {r['dice'][-1]:.3f}" for n, r in rec.items()}
            else:
                rec = text_dice(server.url, case, gt)
                shown = {n: f"{d:.3f}" for n, d in rec.items()}
            seconds.append(time.perf_counter() - start)
            per_case.append({"id": case, **rec})
            print(f"[mirror_axes {mirror_axes}] {i + 1}/{len(cases)} {case}: {shown} ({seconds[-1]:.2f} s)", flush=True)
        served = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refsam3d"].get("mirror_axes")
    out = {"mirror_axes": mirror_axes, "served_mirror_axes": served, "median_case_s": statistics.median(seconds),
           "cases": per_case}
    if n_clicks:
        steps = len(per_case[0][next(iter(LABELS))]["dice"])
        out["dice_after_each"] = [statistics.fmean(c[n]["dice"][k] for c in per_case for n in LABELS) for k in range(steps)]
        out["noc90_mean"] = statistics.fmean(c[n]["noc90"] for c in per_case for n in LABELS)
    else:
        out["per_label_dice"] = {n: statistics.fmean(c[n] for c in per_case) for n in LABELS}
        out["mean_dice"] = statistics.fmean(out["per_label_dice"].values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror-axes", nargs="+", default=["auto", "none"], help="one server per value (--conf mirror_axes)")
    ap.add_argument("--checkpoint", default=str(CHECKPOINT))
    ap.add_argument("--max-cases", type=int, default=40)
    ap.add_argument("--clicks", type=int, default=0, help="the click protocol over REST with N clicks per label")
    ap.add_argument("--no-text", action="store_true", help="with --clicks: clicks alone")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--png", default=None, help="with --clicks: the Dice-after-each-click curves as a PNG")
    args = ap.parse_args()
    if args.no_text and not args.clicks:
        ap.error("--no-text needs --clicks N")
    cases = json.loads(SPLIT.read_text())["test"][: args.max_cases]
    results = []
    with tempfile.TemporaryDirectory(prefix="rest_dice_") as tmp:
        work = Path(tmp)
        (work / "studies").mkdir()
        for case in cases:
            shutil.copy(HIPPOCAMPUS / "imagesTr" / f"{case}.nii.gz", work / "studies" / f"{case}.nii.gz")
        for axes in args.mirror_axes:
            results.append(score_server(axes, cases, work, Path(args.checkpoint), args.clicks, not args.no_text))
    checkpoint = Path(args.checkpoint).resolve()
    summary = {"checkpoint": str(checkpoint.relative_to(REPO)) if checkpoint.is_relative_to(REPO) else str(checkpoint),
               "num_cases": len(cases), "clicks": args.clicks, "text": not args.no_text, "results": results}
    for r in results:
        if args.clicks:
            print(f"mirror_axes {r['mirror_axes']} (served {r['served_mirror_axes']}): Dice after each answer "
                  + " / ".join(f"{d:.4f}" for d in r["dice_after_each"]) + f"; NoC@90 {r['noc90_mean']:.2f}")
        else:
            print(f"mirror_axes {r['mirror_axes']} (served {r['served_mirror_axes']}): Dice {r['mean_dice']:.4f} "
                  + ", ".join(f"{n} {d:.4f}" for n, d in r["per_label_dice"].items())
                  + f"; median request {r['median_case_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.png and args.clicks:
        plot_curves(summary, Path(args.png))


def plot_curves(summary: dict, path: Path) -> None:
    """Mean Dice after each answer (0 = the class prompt's answer), one curve per ``--mirror-axes`` value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    first = 0 if summary["text"] else 1
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in summary["results"]:
        xs = list(range(first, first + len(r["dice_after_each"])))
        ax.plot(xs, r["dice_after_each"], marker="o", label=f"mirror_axes {r['mirror_axes']} (NoC@90 {r['noc90_mean']:.2f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(NOC_DICE, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("clicks per label")
    ax.set_ylabel(f"mean Dice ({summary['num_cases']} cases, 2 labels)")
    ax.set_title(f"The server over REST, {'class prompt + clicks' if summary['text'] else 'clicks alone'} (OHIF's body)",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
