#!/usr/bin/env python3
"""The server's own answer, scored (prints numbers; not a test): Dice over REST on held-out hippocampus cases.

Starts the real ``monailabel start_server`` with a checkpoint over the test cases of the split, asks each case for
the label map of every label (``POST /infer/refsam3d``, as a viewer's auto-segmentation does), reads the NIfTI it
returns with nibabel and scores it against the manual label (MONAI's ``compute_dice``). One server per
``--mirror-axes`` setting (``auto``: the weights' training flips, the default; ``none``: one pass), so the cost and
the gain of the server's test-time mirroring are measured on the same cases, with the request time.

    .venv/bin/python benchmarks/bench_rest_dice.py [--mirror-axes auto none] [--max-cases 40] [--json out.json]
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
from server_process import MonaiLabelServer  # noqa: E402

HIPPOCAMPUS = REPO.parent / "shared" / "data" / "msd-hippocampus"
CHECKPOINT = REPO / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
SPLIT = REPO / "benchmarks" / "results" / "hippocampus_split.json"
LABELS = {"anterior hippocampus": 1, "posterior hippocampus": 2}


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    from monai.metrics import compute_dice

    p, g = (torch.as_tensor(a)[None, None].float() for a in (pred, gt))
    return float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])


def score_server(mirror_axes: str, cases: list[str], work: Path, checkpoint: Path) -> dict:
    model_dir = work / f"model_{mirror_axes}"
    model_dir.mkdir()
    shutil.copy(checkpoint, model_dir / "refsam3d_small.pt")
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": "minilm", "use_pretrained_model": "false",
            "model_dir": str(model_dir), "mirror_axes": mirror_axes, "skip_trainers": "true", "skip_strategies": "true"}
    per_case, seconds = [], []
    with MonaiLabelServer(work / "studies", conf, work / f"server_{mirror_axes}.log") as server:
        for i, case in enumerate(cases):
            start = time.perf_counter()
            r = requests.post(f"{server.url}/infer/refsam3d", params={"image": case, "output": "image"},
                              data={"params": json.dumps({"result_extension": ".nii.gz"})}, timeout=600)
            seconds.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise RuntimeError(f"{case}: {r.status_code} {r.text[:300]}")
            out = work / "answer.nii.gz"
            out.write_bytes(r.content)
            pred = np.asanyarray(nib.load(str(out)).dataobj)
            gt = np.asanyarray(nib.load(str(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz")).dataobj)
            per_case.append({"id": case, **{name: dice(pred == v, gt == v) for name, v in LABELS.items()}})
            print(f"[mirror_axes {mirror_axes}] {i + 1}/{len(cases)} {case}: "
                  + ", ".join(f"{n} {per_case[-1][n]:.3f}" for n in LABELS) + f" ({seconds[-1]:.2f} s)", flush=True)
        info = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refsam3d"]
    per_label = {n: statistics.fmean(c[n] for c in per_case) for n in LABELS}
    return {"mirror_axes": mirror_axes, "served_mirror_axes": info.get("mirror_axes"),
            "mean_dice": statistics.fmean(per_label.values()), "per_label_dice": per_label,
            "median_request_s": statistics.median(seconds), "cases": per_case}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror-axes", nargs="+", default=["auto", "none"], help="one server per value (--conf mirror_axes)")
    ap.add_argument("--checkpoint", default=str(CHECKPOINT))
    ap.add_argument("--max-cases", type=int, default=40)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    cases = json.loads(SPLIT.read_text())["test"][: args.max_cases]
    results = []
    with tempfile.TemporaryDirectory(prefix="rest_dice_") as tmp:
        work = Path(tmp)
        (work / "studies").mkdir()
        for case in cases:
            shutil.copy(HIPPOCAMPUS / "imagesTr" / f"{case}.nii.gz", work / "studies" / f"{case}.nii.gz")
        for axes in args.mirror_axes:
            results.append(score_server(axes, cases, work, Path(args.checkpoint)))
    summary = {"checkpoint": str(Path(args.checkpoint).resolve().relative_to(REPO)) if Path(args.checkpoint).resolve()
               .is_relative_to(REPO) else args.checkpoint, "num_cases": len(cases), "results": results}
    for r in results:
        print(f"mirror_axes {r['mirror_axes']} (served {r['served_mirror_axes']}): Dice {r['mean_dice']:.4f} "
              + ", ".join(f"{n} {d:.4f}" for n, d in r["per_label_dice"].items())
              + f"; median request {r['median_request_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
