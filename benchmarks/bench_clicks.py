#!/usr/bin/env python3
"""Benchmark clicks over HTTP (prints numbers; not a test): click latency against a cold request.

Per setting it starts the real ``monailabel start_server``, sends one untimed warm-up click request, and, per repeat
(the study's file touched first, so the cold request really encodes):

* cold: a text request on the study (pre-processing + encoder + decoder);
* click 1: OHIF's Point Prompts body (``refsam3d_clicks``, one positive click, text + clicks): decoder only;
* click 2: the same interaction with a negative click added (previous mask = the last answer);
* clicks only: ``clicks_only: true`` with the two clicks.

Settings: ``hippocampus`` (the shipped ``small`` checkpoint, an MSD hippocampus test case; goal: a click <= 0.5 s)
and ``ct`` (``vit_b`` with a random full-size SAM ViT-B, the TotalSegmentator abdominal CT at 1.5 mm;
goal: a click <= 10 % of the cold request on 2 cores).

    .venv/bin/python benchmarks/bench_clicks.py [--settings hippocampus ct] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_server import CT, SHARED, random_sam_checkpoint, wait_until_model_ready  # noqa: E402
from server_process import MonaiLabelServer  # noqa: E402

HIPPOCAMPUS = SHARED / "msd-hippocampus"
CHECKPOINT = REPO / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
SPLIT = REPO / "benchmarks" / "results" / "hippocampus_split.json"


def post(url: str, model: str, image: str, params: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    r = requests.post(f"{url}/infer/{model}", params={"image": image, "output": "json"},
                      data={"params": json.dumps(params)}, timeout=3600)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text[:500]}")
    return elapsed, r.json()


def setting(name: str, work: Path, args) -> dict:
    """Studies folder, --conf, image id, label index, click points of one setting."""
    studies = work / f"studies_{name}"
    studies.mkdir()
    if name == "hippocampus":
        import nibabel as nib
        import numpy as np

        case = json.loads(SPLIT.read_text())["test"][0]
        shutil.copy(HIPPOCAMPUS / "imagesTr" / f"{case}.nii.gz", studies / f"{case}.nii.gz")
        (work / "model_small").mkdir()
        shutil.copy(CHECKPOINT, work / "model_small" / "refsam3d_small.pt")
        truth = np.asanyarray(nib.load(str(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz")).dataobj)
        inside = [int(c) for c in np.argwhere(truth == 2).mean(axis=0).round()]
        outside = [int(c) for c in np.argwhere(truth == 0)[0]]
        conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": args.text_encoder,
                "use_pretrained_model": "false", "model_dir": str(work / "model_small")}
        return {"studies": studies, "conf": conf, "image": case, "file": f"{case}.nii.gz", "label": 2,
                "text": "posterior hippocampus", "points": [inside, outside]}
    import nibabel as nib

    shutil.copy(CT, studies / "abdomen_ct.nii.gz")
    shape = nib.load(str(CT)).shape
    conf = {"preset": "vit_b", "label_set": "btcv", "target_spacing": "1.5", "text_encoder": args.text_encoder,
            "use_pretrained_model": "false", "model_dir": str(work / "model_vit_b"),
            "sam_checkpoint": str(args.sam_checkpoint or random_sam_checkpoint(work))}
    near_corner = [s // 5 for s in shape]  # inside one sliding window only (the centre lies in all eight)
    return {"studies": studies, "conf": conf, "image": "abdomen_ct", "file": "abdomen_ct.nii.gz", "label": 1,
            "text": "spleen", "points": [near_corner, [s // 5 + 6 for s in shape]]}


def bench(name: str, args, work: Path) -> dict:
    s = setting(name, work, args)
    server = MonaiLabelServer(s["studies"], s["conf"], work / f"server_{name}.log", startup_timeout=1800)
    server.start()
    try:
        wait_until_model_ready(server.url)
        warm = {"label_prompt": [s["label"]], "points": s["points"][:1], "point_labels": [1], "clicks_only": True}
        post(server.url, "refsam3d_clicks", s["image"], warm)  # warm-up (first-call initialisation), not timed
        runs = []
        for rep in range(args.repeats):
            os.utime(s["studies"] / s["file"])  # a new identity: the cold request encodes
            cold, r0 = post(server.url, "refsam3d", s["image"], {"text_prompt": s["text"]})
            body = {"label_prompt": [s["label"]], "points": s["points"][:1], "point_labels": [1],
                    "result_extension": ".nrrd", "result_dtype": "uint8"}
            click1, r1 = post(server.url, "refsam3d_clicks", s["image"], body)
            click2, r2 = post(server.url, "refsam3d_clicks", s["image"],
                              {**body, "points": s["points"], "point_labels": [1, 0]})
            only, r3 = post(server.url, "refsam3d_clicks", s["image"],
                            {**body, "points": s["points"], "point_labels": [1, 0], "clicks_only": True})
            assert r0["cache"]["encoding"] == "miss" and r1["clicks"]["windows"]["encoded"] == 0, (r0["cache"], r1["clicks"])
            run = {"cold_s": cold, "click1_s": click1, "click2_s": click2, "clicks_only_s": only,
                   "click1_server_infer_s": r1["latencies"]["infer"], "windows_decoded": r2["clicks"]["windows"]["decoded"],
                   "windows_total": r2["clicks"]["windows"]["total"]}
            runs.append(run)
            print(f"  [{name} run {rep + 1}] " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                                       for k, v in run.items()), flush=True)
        out = {"setting": name, "preset": s["conf"]["preset"], "repeats": args.repeats}
        for key in runs[0]:
            out[key] = round(statistics.median(r[key] for r in runs), 3)
        out["click_share_of_cold"] = round(out["click2_s"] / out["cold_s"], 3)
        return out
    finally:
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["hippocampus"], choices=["hippocampus", "ct"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sam-checkpoint", default=None, help="official sam_vit_b_01ec64.pth (default: random, same size)")
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    print(f"CPU threads: {torch.get_num_threads()}; load average: {os.getloadavg()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_clicks_") as tmp:
        for name in args.settings:
            print(f"== {name}", flush=True)
            results.append(bench(name, args, Path(tmp)))
    keys = ["cold_s", "click1_s", "click2_s", "clicks_only_s", "click1_server_infer_s", "windows_decoded",
            "windows_total", "click_share_of_cold"]
    print("\n| metric | " + " | ".join(r["setting"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(r[k]) for r in results) + " |")
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
