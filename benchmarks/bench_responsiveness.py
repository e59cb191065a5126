#!/usr/bin/env python3
"""How fast the server answers other requests while a cold whole-CT inference runs (prints numbers; not a test).

Starts the real ``monailabel start_server`` (vit_b with a full-size SAM ViT-B checkpoint: random in the official
format unless ``--sam-checkpoint``; label set btcv; the abdominal CT at 1.5 mm = 8 windows of 128^3), waits for
the network, then runs one cold inference (a text prompt) and, while it runs, sends round-robin from one client:
``GET /info/``, ``GET /datastore/?output=all``, ``POST /activelearning/random``, ``GET /train/`` (training
status; 404 while no training has run) and an OHIF static file.  Prints p50 / p95 / max per endpoint and over
all.  Goal (issue 22): p95 <= 100 ms on 2 cores.

    .venv/bin/python benchmarks/bench_responsiveness.py [--repeats 1] [--interval 0.05] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_server import CT, random_sam_checkpoint, wait_until_model_ready  # noqa: E402
from server_process import MonaiLabelServer  # noqa: E402

PROBES = [("GET", "/info/"), ("GET", "/datastore/?output=all"), ("POST", "/activelearning/random"),
          ("GET", "/train/"), ("GET", "/ohif/")]


def summary(values) -> dict:
    a = np.asarray(values) * 1000.0
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "max_ms": round(float(a.max()), 1)}


def probe_while(url: str, busy: threading.Thread, interval: float) -> dict:
    """Latencies (s) per probe path, sent round-robin while ``busy`` runs."""
    session = requests.Session()
    out = {path: [] for _, path in PROBES}
    i = 0
    while busy.is_alive():
        method, path = PROBES[i % len(PROBES)]
        i += 1
        start = time.perf_counter()
        r = session.request(method, url + path, json={} if method == "POST" else None, timeout=120)
        elapsed = time.perf_counter() - start
        if r.status_code != 200 and not (path == "/train/" and r.status_code == 404):  # 404: no training run yet
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        if busy.is_alive():
            out[path].append(elapsed)
        time.sleep(interval)
    return out


def cold_inference(url: str, image: str, result: dict) -> None:
    start = time.perf_counter()
    r = requests.post(f"{url}/infer/refsam3d", params={"image": image, "output": "json"},
                      data={"params": json.dumps({"text_prompt": "CT images, abdominal organ segmentation, spleen"})},
                      timeout=3600)
    result.update(seconds=time.perf_counter() - start, status=r.status_code,
                  encoding=r.json().get("cache", {}).get("encoding") if r.status_code == 200 else r.text[:300])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="cold inferences (each on a fresh copy of the CT)")
    parser.add_argument("--interval", type=float, default=0.05, help="pause between probes (s)")
    parser.add_argument("--sam-checkpoint", default=None)
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not CT.exists():
        print(f"missing {CT} (../shared/data beside the repository)", file=sys.stderr)
        return 1
    print(f"CPUs: {os.cpu_count()}; load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_resp_") as tmp:
        work = Path(tmp)
        studies = work / "studies"
        studies.mkdir()
        for i in range(args.repeats):
            shutil.copy(CT, studies / f"abdomen_ct_{i}.nii.gz")
        conf = {"preset": "vit_b", "label_set": "btcv", "target_spacing": "1.5", "text_encoder": args.text_encoder,
                "use_pretrained_model": "false", "model_dir": str(work / "model"),
                "sam_checkpoint": str(args.sam_checkpoint or random_sam_checkpoint(work))}
        with MonaiLabelServer(studies, conf, work / "server.log", startup_timeout=1800) as server:
            wait_until_model_ready(server.url)
            idle_busy = threading.Thread(target=time.sleep, args=(3.0,))
            idle_busy.start()
            idle = probe_while(server.url, idle_busy, args.interval)
            during = {path: [] for _, path in PROBES}
            runs = []
            for i in range(args.repeats):
                result: dict = {}
                worker = threading.Thread(target=cold_inference, args=(server.url, f"abdomen_ct_{i}", result))
                worker.start()
                for path, values in probe_while(server.url, worker, args.interval).items():
                    during[path] += values
                worker.join()
                if result["status"] != 200 or result["encoding"] != "miss":
                    raise RuntimeError(f"inference: {result}")
                runs.append(round(result["seconds"], 1))
                print(f"  cold inference {i + 1}: {result['seconds']:.1f} s", flush=True)
    rows = {"idle (all)": summary(sum(idle.values(), []))}
    rows.update({f"during: {path}": summary(v) for path, v in during.items() if v})
    rows["during (all)"] = summary(sum(during.values(), []))
    print(f"\ncold whole-CT vit_b inference(s): {runs} s; load average after: {os.getloadavg()}")
    print("\n| requests | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"inference_s": runs, "latency": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
