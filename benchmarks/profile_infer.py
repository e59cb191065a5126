#!/usr/bin/env python3
"""Where a request's time goes: the real app in-process, one CT, timed part by part (prints numbers; not a test).

Builds ``apps/refsam3d`` (``RefSAM3DApp``) in a temporary folder with the given preset (vit_b: a random SAM ViT-B
checkpoint in the official format, same speed as the real one) and sends it, as the REST route would:

1. one prompt, cold (pre-processing, encoding, decoding, post-processing, writing);
2. another prompt on the same study (cached image and encodings);
3. every label of the set (13 for BTCV) on the cached encodings.

For each it prints MONAI Label's own latencies (``pre``, ``infer``, ``post``, ``write``) and, inside ``infer``, the
time of the image encoder, the pixel decoder, storing the encodings, decoding the prompts and the rest (the
sliding window's blending, the label map); and the bare 3D ViT-B encoder on the same windows (patch embedding and
12 blocks, no adapters: ``bench_model.py``'s ``vit_b encoder``), the reference of issue 24's targets.
``--cprofile`` / ``--torch-profile`` add the top functions / operators of the cold request.

    .venv/bin/python benchmarks/profile_infer.py [--preset vit_b] [--precision auto] [--json out.json] [--png out.png]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "refsam3d"
sys.path.insert(0, str(APP))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_server import CT  # noqa: E402  (the same CT, also under REFSAM3D_TEST_DATA)


class PartTimer:
    """Wall time spent inside chosen callables, and how often each was called."""

    def __init__(self) -> None:
        self.seconds: dict = collections.defaultdict(float)
        self.calls: dict = collections.defaultdict(int)

    def wrap(self, owner, name: str, part: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
                self.calls[part] += 1

        setattr(owner, name, timed)  # an instance attribute (a module's ``forward`` too) or a module function

    def take(self) -> dict:
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        self.seconds.clear()
        return out


def build_app(work: Path, preset: str, precision: str):
    from bench_server import random_sam_checkpoint
    from main import RefSAM3DApp

    studies = work / "studies"
    studies.mkdir()
    shutil.copy(CT, studies / "abdomen_ct.nii.gz")
    conf = {"preset": preset, "label_set": "btcv", "target_spacing": "1.5", "text_encoder": "minilm",
            "use_pretrained_model": "false", "model_dir": str(work / "model"), "precision": precision,
            "preload": "false"}
    if preset == "vit_b":
        conf["sam_checkpoint"] = str(random_sam_checkpoint(work))
    cwd = os.getcwd()
    os.chdir(APP)
    try:
        app = RefSAM3DApp(str(APP), str(studies), conf)
    finally:
        os.chdir(cwd)
    from lib.infers.writer_warmup import warm_up_writer

    app._infers["refsam3d"].store.get()  # what the server's background preload does at start-up
    warm_up_writer()
    return app


def bare_encoder_seconds(model, roi, windows: int, dtype) -> float:
    """The bare ViT-B on one roi-sized window (median of 3 after a warm-up), times the number of windows."""
    import statistics

    import torch
    from bench_model import _bare_encoder
    from lib.precision import encoding_autocast

    x = torch.rand(1, 1, *roi)
    times = []
    with torch.inference_mode(), encoding_autocast("cpu", dtype):
        for i in range(4):
            start = time.perf_counter()
            _bare_encoder(model, x)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * windows


def timed_request(app, timer: PartTimer, params: dict, cprofile: bool = False, torch_profile: bool = False) -> dict:
    """One inference request as the REST route sends it: wall time, MONAI Label's latencies and the parts inside
    ``infer``; with ``cprofile`` / ``torch_profile`` it also prints the top Python functions / torch operators."""
    prof = cProfile.Profile() if cprofile else None
    tprof = None
    if torch_profile:
        from torch.profiler import ProfilerActivity, profile

        tprof = profile(activities=[ProfilerActivity.CPU])
    start = time.perf_counter()
    with (tprof or contextlib.nullcontext()):
        if prof:
            prof.enable()
        result = app.infer({"model": "refsam3d", "image": "abdomen_ct", **params})
        if prof:
            prof.disable()
    wall = time.perf_counter() - start
    lat = result["params"]["latencies"]
    parts = timer.take()
    inside = sum(v for k, v in parts.items() if k != "decode prompts") + parts.get("decode prompts", 0.0)
    parts["rest of infer"] = round(max(0.0, lat["infer"] - inside), 3)
    out = {"wall_s": round(wall, 3), "pre_s": lat["pre"], "infer_s": lat["infer"], "post_s": lat["post"],
           "write_s": lat["write"], "infer_parts_s": parts}
    if prof:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(35)
        print(text.getvalue())
    if tprof:
        print(tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vit_b", choices=["vit_b", "small"])
    ap.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--cprofile", action="store_true", help="print the cold request's top Python functions")
    ap.add_argument("--torch-profile", action="store_true", help="print the cold request's top torch operators")
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=None, help="a stacked bar chart of the three requests")
    args = ap.parse_args(argv)
    if not CT.exists():
        print(f"missing {CT} (../shared/data beside the repository)", file=sys.stderr)
        return 1
    import torch

    import lib.inference as inference

    print(f"CPU threads: {torch.get_num_threads()}; load average: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="profile_infer_") as tmp:
        app = build_app(Path(tmp), args.preset, args.precision)
        task = app._infers["refsam3d"]
        model, _ = task.store.get()  # built by build_app, as by the server's preload
        timer = PartTimer()
        timer.wrap(model.image_encoder, "forward", "image encoder")
        timer.wrap(model.pixel_decoder, "forward", "pixel decoder")
        timer.wrap(inference, "_compact", "store encodings")
        timer.wrap(model, "decode", "decode prompts")

        runs = {"one prompt, cold": timed_request(app, timer, {"text_prompt": "spleen"}, args.cprofile, args.torch_profile),
                "another prompt, cached": timed_request(app, timer, {"text_prompt": "liver"}),
                "13 labels, cached": timed_request(app, timer, {})}
        windows = timer.calls["store encodings"]  # windows encoded by the cold request
        roi = tuple(int(r) for r in task.roi_size)
        bare = bare_encoder_seconds(model, roi, windows, task.precision) if args.preset == "vit_b" else None
        observer = getattr(app.datastore(), "_observer", None)  # the datastore's file watcher, before the folder goes
        if observer is not None:
            observer.stop()
            observer.join()

    cold = runs["one prompt, cold"]
    from lib.precision import precision_name

    summary = {"preset": args.preset, "precision": precision_name(task.precision),
               "windows": windows, "bare_encoder_s": round(bare, 2) if bare else None,
               "runs": runs,
               "cold_over_bare_encoder": round(cold["wall_s"] / bare, 2) if bare else None,
               "pre_post_write_cold_s": round(cold["pre_s"] + cold["post_s"] + cold["write_s"], 2),
               "further_prompt_share": round(runs["another prompt, cached"]["wall_s"] / cold["wall_s"], 3),
               "13_labels_over_one_prompt_cached": round(runs["13 labels, cached"]["wall_s"] / runs["another prompt, cached"]["wall_s"], 2)}
    print(f"\n{args.preset}, {summary['precision']}, {windows} windows of {roi}")
    print("| request | wall s | pre | infer | post | write | inside infer |")
    print("|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        inner = ", ".join(f"{k} {v:.2f}" for k, v in r["infer_parts_s"].items())
        print(f"| {name} | {r['wall_s']:.2f} | {r['pre_s']:.2f} | {r['infer_s']:.2f} | {r['post_s']:.2f} | {r['write_s']:.2f} | {inner} |")
    for key in ("bare_encoder_s", "cold_over_bare_encoder", "pre_post_write_cold_s", "further_prompt_share",
                "13_labels_over_one_prompt_cached"):
        print(f"{key}: {summary[key]}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.png:
        plot(runs, bare, Path(args.png), f"{args.preset} ({summary['precision']}), {windows} windows of {roi[0]}³")
    return 0


def plot(runs: dict, bare, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ["pre_s", "image encoder", "pixel decoder", "store encodings", "decode prompts", "rest of infer", "post_s", "write_s"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = list(runs)
    left = [0.0] * len(names)
    for part in parts:
        vals = [runs[n][part] if part in runs[n] else runs[n]["infer_parts_s"].get(part, 0.0) for n in names]
        ax.barh(names, vals, left=left, label=part.replace("_s", ""))
        left = [a + b for a, b in zip(left, vals)]
    if bare:
        ax.axvline(bare, color="k", ls="--", lw=1, label="bare encoder")
        ax.axvline(1.5 * bare, color="r", ls=":", lw=1, label="1.5 x bare encoder")
    ax.set_xlabel("seconds")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
