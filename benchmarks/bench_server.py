#!/usr/bin/env python3
"""Benchmark the RefSAM3D Label server over HTTP (prints numbers; not a test).

For each preset it starts the real ``monailabel start_server`` and measures:

* start: process start -> first ``/info`` answer, and -> network built (background preload finished);
* one prompt on the TotalSegmentator abdominal CT (122 x 101 x 112 at 3 mm) resampled to 1.5 mm (cold: encodes);
* a second request on the same study with another prompt (reuses the cached encoding);
* 13 prompts (every BTCV label, automatic segmentation) on the same study (cached encoding);
* 13 prompts on a copy of the study (cold: encodes, then decodes 13 prompts).

``--kits`` adds a KiTS-sized CT (512 x 512 x 1059 voxels at 0.78 x 0.78 x 0.5 mm, int16, generated into the temp
folder by ``benchmarks/kits_volume.py``, never stored): one prompt with vit_b, its time and the server's peak
memory (largest sum of VmRSS over the server's process tree, sampled every 50 ms while the request runs, and
the largest VmHWM).  Goal: peak <= 6 GiB.  ``--presets`` with no name skips the abdominal CT runs.

vit_b uses a full-size SAM ViT-B checkpoint (``--sam-checkpoint``, or a random one in the official format built
here: the speed is the same).  The text encoder defaults to the offline all-MiniLM-L6-v2 (``minilm``).
Goals on 2 CPU cores: vit_b one prompt on the whole CT <= 30 s; each further prompt <= 10 % of the first.

    .venv/bin/python benchmarks/bench_server.py [--presets vit_b small] [--repeats 1] [--kits] [--json out.json]
    .venv/bin/python benchmarks/bench_server.py --presets --kits   # the KiTS-sized CT only
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
from server_process import MonaiLabelServer  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from kits_volume import kits_like_ct  # noqa: E402
from rss_sampler import PeakRSS  # noqa: E402

# ../shared/data beside the repository, or the folder REFSAM3D_TEST_DATA names (as in tests/conftest.py)
SHARED = Path(os.environ.get("REFSAM3D_TEST_DATA") or REPO.parent / "shared" / "data").resolve()
CT = SHARED / "totalsegmentator-example" / "example_ct.nii.gz"


def random_sam_checkpoint(folder: Path) -> Path:
    import torch
    from segment_anything import build_sam_vit_b

    out = folder / "sam_vit_b_random.pth"
    torch.manual_seed(0)
    torch.save(build_sam_vit_b().state_dict(), out)
    return out


def wait_until_model_ready(url: str) -> dict:
    """``models.refsam3d`` of ``/info`` once the background preload has built the network and loaded weights."""
    while True:
        info = requests.get(f"{url}/info/", timeout=60).json()["models"]["refsam3d"]
        if info["weights"]["version"]:
            return info
        time.sleep(0.5)


def timed_infer(url: str, image: str, params: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    r = requests.post(f"{url}/infer/refsam3d", params={"image": image, "output": "json"},
                      data={"params": json.dumps(params)}, timeout=3600)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text[:500]}")
    return elapsed, r.json()


def server_conf(preset: str, args, work: Path) -> dict:
    conf = {
        "preset": preset,
        "label_set": "btcv",
        "target_spacing": args.target_spacing,
        "text_encoder": args.text_encoder,
        "use_pretrained_model": "false",
        "model_dir": str(work / f"model_{preset}"),
        "sw_overlap": str(args.overlap),
    }
    conf.update({k: v for k, v in (("target_spacing", args.target_spacing), ("roi_size", args.roi_size)) if v})
    if preset == "vit_b":
        conf["sam_checkpoint"] = str(args.sam_checkpoint or work / "sam_vit_b_random.pth")
        if not Path(conf["sam_checkpoint"]).exists():
            random_sam_checkpoint(work)
    return conf


def bench_kits(args, work: Path) -> dict:
    """One prompt on the KiTS-sized CT with vit_b: request time and the server's peak memory."""
    studies = work / "studies_kits"
    studies.mkdir()
    start = time.perf_counter()
    kits_like_ct(CT, studies / "kits_ct.nii.gz")
    print(f"  KiTS-sized CT generated in {time.perf_counter() - start:.0f}s", flush=True)
    server = MonaiLabelServer(studies, server_conf("vit_b", args, work), work / "server_kits.log", startup_timeout=1800)
    server.start()
    try:
        wait_until_model_ready(server.url)
        time.sleep(3)  # the preload's writer warm-up
        with PeakRSS(server.process.pid) as peak:
            elapsed, r = timed_infer(server.url, "kits_ct", {"text_prompt": "CT images, abdominal organ segmentation, kidney"})
        lat = r["latencies"]
        out = {"preset": "vit_b (KiTS-sized CT)", "shape": [512, 512, 1059], "request_s": round(elapsed, 1),
               "server_pre_s": lat["pre"], "server_infer_s": lat["infer"], "server_post_s": lat["post"],
               "server_write_s": lat["write"], "rss_before_request_gib": round(peak.start_gib, 2),
               "peak_rss_gib": round(peak.tree_gib, 2), "peak_vmhwm_gib": round(peak.hwm_gib, 2)}
        print("  [kits] " + ", ".join(f"{k}={v}" for k, v in out.items()), flush=True)
        return out
    finally:
        server.stop()


def bench_preset(preset: str, args, work: Path) -> dict:
    studies = work / f"studies_{preset}"
    studies.mkdir()
    shutil.copy(CT, studies / "abdomen_ct.nii.gz")
    shutil.copy(CT, studies / "abdomen_ct_copy.nii.gz")
    conf = server_conf(preset, args, work)
    server = MonaiLabelServer(studies, conf, work / f"server_{preset}.log", startup_timeout=1800)
    t0 = time.perf_counter()
    server.start()
    t_info = time.perf_counter() - t0
    try:
        info = wait_until_model_ready(server.url)  # the background preload built the network and loaded weights
        t_ready = time.perf_counter() - t0
        roi = info["roi_size"]
        out = {"preset": preset, "start_to_info_s": round(t_info, 1), "start_to_model_ready_s": round(t_ready, 1),
               "roi_size": roi, "sw_overlap": args.overlap, "runs": []}
        for rep in range(args.repeats):
            image, copy = "abdomen_ct", "abdomen_ct_copy"
            if rep > 0:  # a fresh identity for the cold runs: touch the files
                for name in ("abdomen_ct.nii.gz", "abdomen_ct_copy.nii.gz"):
                    os.utime(studies / name)
            one, r1 = timed_infer(server.url, image, {"text_prompt": "CT images, abdominal organ segmentation, spleen"})
            again, r2 = timed_infer(server.url, image, {"text_prompt": "CT images, abdominal organ segmentation, liver"})
            thirteen, r3 = timed_infer(server.url, image, {})
            cold13, r4 = timed_infer(server.url, copy, {})
            assert r1["cache"]["encoding"] == "miss" and r2["cache"]["encoding"] == "hit", (r1["cache"], r2["cache"])
            assert r3["cache"]["encoding"] == "hit" and r4["cache"]["encoding"] == "miss" and len(r3["label_names"]) == 13
            run = {"one_prompt_cold_s": one, "second_prompt_cached_s": again, "13_prompts_cached_s": thirteen,
                   "13_prompts_cold_s": cold13, "server_infer_s": r1["latencies"]["infer"],
                   "server_pre_s": r1["latencies"]["pre"], "server_post_write_s": r1["latencies"]["post"] + r1["latencies"]["write"]}
            out["runs"].append(run)
            print(f"  [{preset} run {rep + 1}] " + ", ".join(f"{k}={v:.1f}" for k, v in run.items()), flush=True)
        cache = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refsam3d"]["cache"]
        out["cache_bytes_per_study_mb"] = round(cache["bytes"] / 2 / 2**20, 1)
        for key in out["runs"][0]:
            out[key] = round(statistics.median(r[key] for r in out["runs"]), 1)
        out["further_prompt_share_of_first"] = round(out["second_prompt_cached_s"] / out["one_prompt_cold_s"], 3)
        return out
    finally:
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["vit_b", "small"], choices=["vit_b", "small"])
    parser.add_argument("--kits", action="store_true", help="also one prompt on a KiTS-sized CT, with the server's peak RSS")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--overlap", default="auto", help="sw_overlap: auto (the app's default) or a fraction")
    parser.add_argument("--sam-checkpoint", default=None, help="official sam_vit_b_01ec64.pth (default: random, same size)")
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--target-spacing", default="1.5", help="--conf target_spacing (mm; coarser = quick smoke runs)")
    parser.add_argument("--roi-size", default=None, help="--conf roi_size (default: the label set's for the preset)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not CT.exists():
        print(f"missing {CT} (../shared/data beside the repository)", file=sys.stderr)
        return 1
    import torch

    print(f"CPU threads: {torch.get_num_threads()}; load average: {os.getloadavg()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp:
        for preset in args.presets:
            print(f"== {preset}", flush=True)
            results.append(bench_preset(preset, args, Path(tmp)))
        kits = None
        if args.kits:
            print("== vit_b, KiTS-sized CT", flush=True)
            kits = bench_kits(args, Path(tmp))
    keys = ["start_to_info_s", "start_to_model_ready_s", "one_prompt_cold_s", "second_prompt_cached_s",
            "13_prompts_cached_s", "13_prompts_cold_s", "further_prompt_share_of_first", "cache_bytes_per_study_mb"]
    if results:
        print("\n| metric | " + " | ".join(r["preset"] for r in results) + " |")
        print("|---|" + "---|" * len(results))
        for k in keys:
            print(f"| {k} | " + " | ".join(str(r[k]) for r in results) + " |")
    if kits:
        print("\n| KiTS-sized CT, vit_b, one prompt | |\n|---|---|")
        for k, v in kits.items():
            print(f"| {k} | {v} |")
        results.append(kits)
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
