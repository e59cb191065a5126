#!/usr/bin/env python3
"""Soak: 8 loopback clients against the real server for a bounded time (prints numbers; not a test).

Each client loops over a random mix of: cold inferences (an upload of the example CT with fresh noise, so the
server encodes it), cached inferences (a text prompt on a datastore study), ``GET /info/``, datastore reads
(``/datastore/?output=all``, an image, a label) and writes (``PUT /datastore/label`` of the client's own label
with a new content each time), and bad inputs (unknown image, params not JSON, a forged header of 2.7e10 voxels,
a traversal tag, an over-long prompt), which must get a 4xx.  At the end every label a client saved is read
back and compared with the last content it wrote ("labels lost").

Prints requests served, 5xx count (goal 0), unexpected answers, labels lost (goal 0), p50/p95 latency per
endpoint and the server's RSS after warm-up (the first ``--warmup`` fraction of the time, while the bounded
encoding cache fills; ``--cache-mb``) and at the end (goal: growth <= 10 %), also net of the cache's own growth.

    .venv/bin/python benchmarks/bench_soak.py [--seconds 180] [--clients 8] [--preset small] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
from app_fixtures import build_studies, write_label_set  # noqa: E402
from bench_server import random_sam_checkpoint, wait_until_model_ready  # noqa: E402
from server_process import MonaiLabelServer  # noqa: E402

SHARED = (REPO.parent / "shared" / "data").resolve()
TOTALSEG, HIPPO = SHARED / "totalsegmentator-example", SHARED / "msd-hippocampus"
PROMPTS = ["liver", "spleen", "right kidney", "aorta", "CT images, abdominal organ segmentation, liver"]
STUDY = "example_ct_sm"


def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(data, affine).to_bytes(), compresslevel=1)


def _forged_header() -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape((3000, 3000, 3000))
    header.set_data_dtype(np.float32)
    return gzip.compress(header.binaryblock + b"\0" * 1028)


class Client(threading.Thread):
    """One loopback client; records (endpoint, status, seconds) and the labels it saved."""

    def __init__(self, idx: int, url: str, stop_at: float, ct: nib.Nifti1Image, studies: list, stats: "Stats"):
        super().__init__(name=f"client-{idx}", daemon=True)
        self.idx, self.url, self.stop_at, self.studies, self.stats = idx, url, stop_at, studies, stats
        self.rng = random.Random(idx)
        self.ct_data, self.ct_affine = np.asanyarray(ct.dataobj).astype(np.int16), ct.affine
        self.session = requests.Session()
        self.saved: dict = {}  # (image, tag) -> label array last written

    def call(self, endpoint: str, method: str, path: str, expect: tuple = (200,), **kw) -> requests.Response | None:
        start = time.perf_counter()
        try:
            r = self.session.request(method, self.url + path, timeout=600, **kw)
        except requests.RequestException as e:
            self.stats.add(endpoint, 0, time.perf_counter() - start, False, f"{type(e).__name__}")
            return None
        ok = r.status_code in expect
        self.stats.add(endpoint, r.status_code, time.perf_counter() - start, ok, "" if ok else r.text[:200])
        return r

    def infer_cold(self):
        noise = np.random.default_rng(self.rng.randrange(2**31)).integers(-1, 2, self.ct_data.shape, dtype=np.int16)
        noisy = self.ct_data + noise  # new content: the server encodes it
        files = {"file": ("cold.nii.gz", _nifti_bytes(noisy, self.ct_affine))}
        self.call("infer cold (upload)", "POST", "/infer/refsam3d?output=json", files=files,
                  data={"params": json.dumps({"text_prompt": self.rng.choice(PROMPTS)})})

    def infer_cached(self):
        self.call("infer cached", "POST", f"/infer/refsam3d?image={STUDY}&output=json",
                  data={"params": json.dumps({"text_prompt": self.rng.choice(PROMPTS)})})

    def datastore_read(self):
        kind = self.rng.randrange(3)
        if kind == 0:
            self.call("GET /datastore", "GET", "/datastore/?output=all")
        elif kind == 1:
            self.call("GET /datastore/image", "GET", f"/datastore/image?image={self.rng.choice(self.studies)}")
        elif self.saved:
            image, tag = self.rng.choice(sorted(self.saved))
            self.call("GET /datastore/label", "GET", f"/datastore/label?label={image}&tag={tag}")

    def datastore_write(self):
        image = self.rng.choice(self.studies)
        shape = tuple(int(s) for s in self.stats.shapes[image])
        label = np.zeros(shape, np.uint8)
        label[tuple(slice(0, self.rng.randrange(1, s + 1)) for s in shape)] = 1 + self.idx
        tag = f"soak{self.idx}"
        r = self.call("PUT /datastore/label", "PUT", f"/datastore/label?image={image}&tag={tag}",
                      files={"label": (f"{image}.nii.gz", _nifti_bytes(label, self.stats.affines[image]))},
                      data={"params": "{}"})
        if r is not None and r.status_code == 200:
            self.saved[(image, tag)] = label

    def bad_input(self):
        kind = self.rng.randrange(5)
        if kind == 0:
            self.call("bad input", "POST", "/infer/refsam3d?image=no_such_study", expect=(404,), data={"params": "{}"})
        elif kind == 1:
            self.call("bad input", "POST", f"/infer/refsam3d?image={STUDY}", expect=(400,), data={"params": "{oops"})
        elif kind == 2:
            self.call("bad input", "POST", "/infer/refsam3d", expect=(422,), data={"params": "{}"},
                      files={"file": ("huge.nii.gz", _forged_header())})
        elif kind == 3:
            self.call("bad input", "PUT", f"/datastore/label?image={STUDY}&tag=../../outside", expect=(400, 403, 422),
                      files={"label": ("x.nii.gz", b"not a volume")}, data={"params": "{}"})
        else:
            self.call("bad input", "POST", f"/infer/refsam3d?image={STUDY}", expect=(422,),
                      data={"params": json.dumps({"text_prompt": "liver " * 500})})

    def run(self):
        actions = [(self.infer_cold, 1), (self.infer_cached, 3), (lambda: self.call("GET /info", "GET", "/info/"), 4),
                   (self.datastore_read, 3), (self.datastore_write, 2), (self.bad_input, 2)]
        funcs, weights = zip(*actions)
        while time.time() < self.stop_at:
            self.rng.choices(funcs, weights)[0]()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.rows = defaultdict(list)  # endpoint -> [(status, seconds, ok)]
        self.unexpected: list = []
        self.shapes, self.affines = {}, {}

    def add(self, endpoint, status, seconds, ok, note):
        with self.lock:
            self.rows[endpoint].append((status, seconds, ok))
            if not ok:
                self.unexpected.append((endpoint, status, note))


def rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc] + proc.children(recursive=True)) / 2**20


def cache_mb(url: str) -> float:
    """Memory the encoding cache holds (bounded by --conf cache_size_mb), from /info."""
    cache = requests.get(f"{url}/info/", timeout=120).json()["models"]["refsam3d"]["cache"]
    return cache["bytes"] / 2**20


def labels_lost(url: str, clients: list) -> tuple[int, int]:
    lost = total = 0
    for c in clients:
        for (image, tag), label in c.saved.items():
            total += 1
            r = requests.get(f"{url}/datastore/label", params={"label": image, "tag": tag}, timeout=120)
            if r.status_code != 200:
                lost += 1
                continue
            with tempfile.NamedTemporaryFile(suffix=".nii.gz") as f:
                f.write(r.content)
                f.flush()
                got = np.asanyarray(nib.load(f.name).dataobj)
            lost += int(got.shape != label.shape or not np.array_equal(got, label))
    return lost, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--preset", default="small", choices=["small", "vit_b"])
    parser.add_argument("--warmup", type=float, default=0.33, help="fraction of the time before the RSS baseline")
    parser.add_argument("--cache-mb", default="48", help="--conf cache_size_mb (small: full after a few cold studies)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(f"CPUs: {os.cpu_count()}; load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_soak_") as tmp:
        work = Path(tmp)
        studies = build_studies(work / "studies", TOTALSEG, HIPPO)
        shutil.rmtree(studies / "ct_dicom")
        stats = Stats()
        ids = sorted(p.name[: -len(".nii.gz")] for p in studies.glob("*.nii.gz"))
        for i in ids:
            img = nib.load(str(studies / f"{i}.nii.gz"))
            stats.shapes[i], stats.affines[i] = img.shape, img.affine
        conf = {"preset": args.preset, "label_set": str(write_label_set(work / "labels.json")),
                "text_encoder": "minilm", "use_pretrained_model": "false", "model_dir": str(work / "model"),
                "cache_size_mb": args.cache_mb}
        if args.preset == "vit_b":
            conf["sam_checkpoint"] = str(random_sam_checkpoint(work))
        with MonaiLabelServer(studies, conf, work / "server.log", startup_timeout=1800) as server:
            wait_until_model_ready(server.url)
            rss_start = rss_mb(server.process.pid)
            t0 = time.time()
            ct = nib.load(str(studies / f"{STUDY}.nii.gz"))
            clients = [Client(i, server.url, t0 + args.seconds, ct, ids, stats) for i in range(args.clients)]
            for c in clients:
                c.start()
            time.sleep(args.seconds * args.warmup)
            rss_warm, cache_warm = rss_mb(server.process.pid), cache_mb(server.url)
            for c in clients:
                c.join()
            elapsed = time.time() - t0
            rss_end, cache_end = rss_mb(server.process.pid), cache_mb(server.url)
            lost, saved = labels_lost(server.url, clients)
            queue = requests.get(f"{server.url}/info/", timeout=60).json().get("infer_queue", {})
    rows = {k: v for k, v in sorted(stats.rows.items())}
    served = sum(len(v) for v in rows.values())
    five = sum(1 for v in rows.values() for s, _, _ in v if s >= 500)
    result = {"seconds": round(elapsed, 1), "clients": args.clients, "preset": args.preset, "requests": served,
              "requests_per_s": round(served / elapsed, 2), "5xx": five, "unexpected": len(stats.unexpected),
              "labels_saved": saved, "labels_lost": lost, "rss_start_mb": round(rss_start),
              "rss_after_warmup_mb": round(rss_warm), "rss_end_mb": round(rss_end),
              "rss_growth_after_warmup": round(rss_end / rss_warm - 1, 3),
              "rss_growth_after_warmup_without_cache": round((rss_end - cache_end) / (rss_warm - cache_warm) - 1, 3),
              "cache_after_warmup_mb": round(cache_warm), "cache_end_mb": round(cache_end), "infer_queue": queue,
              "endpoints": {}}
    print(f"\n{served} requests in {elapsed:.0f} s from {args.clients} clients ({args.preset}); 5xx: {five}; "
          f"unexpected: {len(stats.unexpected)}; labels lost: {lost} of {saved} saved")
    print(f"server RSS: {rss_start:.0f} MB at start, {rss_warm:.0f} MB after warm-up, {rss_end:.0f} MB at the end "
          f"({result['rss_growth_after_warmup']:+.1%} after warm-up); "
          f"encoding cache {cache_warm:.0f} -> {cache_end:.0f} MB "
          f"(RSS without it: {result['rss_growth_after_warmup_without_cache']:+.1%}); inference queue: {queue}")
    print("\n| endpoint | requests | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    for name, v in rows.items():
        t = np.asarray([s for _, s, _ in v]) * 1000
        e = {"n": len(v), "p50_ms": round(float(np.percentile(t, 50))), "p95_ms": round(float(np.percentile(t, 95))),
             "max_ms": round(float(t.max()))}
        result["endpoints"][name] = e
        print(f"| {name} | {e['n']} | {e['p50_ms']} | {e['p95_ms']} | {e['max_ms']} |")
    for u in stats.unexpected[:10]:
        print("unexpected:", u)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if five == 0 and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
