#!/usr/bin/env python
"""Whole-CT model path in one process (no server, no HTTP, no writing): what a precision / compile mode buys.

Runs the app's own pre-processing (``lib.transforms.load_transforms``, BTCV settings) on the TotalSegmentator
abdominal CT once, then per mode the app's own ``lib.inference.segment_prompts`` (the sliding window the server
runs, ``sw_overlap auto``, prompts decoded 8 at a time) for: one prompt cold (encodes), a further prompt on the
cached encoding, the 13 BTCV prompts cold and cached.  Times are medians of ``--repeats`` after one warm-up run
(``torch.cuda.synchronize`` before each reading).  Modes:

* ``fp32``: the server with ``--conf precision float32`` (and ``auto`` on a GPU without bf16);
* ``bf16``: the same call with the image encoding under bf16 autocast, as the server's ``--conf precision bfloat16``;
* ``bf16-compile``: bf16 with ``torch.compile`` on the image encoder and the pixel decoder (compile time reported).

Each mode's 13-prompt label map is compared with the first mode's (voxel agreement).  Random weights (the speed
is the same as trained ones).

    python benchmarks/bench_whole_ct.py --device cuda --modes fp32 bf16 bf16-compile --json out.json
    python benchmarks/bench_whole_ct.py --device cpu --preset small --spacing 6 --roi 32 --modes fp32 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "refsam3d"))
DATA = Path(os.environ.get("REFSAM3D_TEST_DATA") or REPO.parent / "shared" / "data").resolve()
CT = DATA / "totalsegmentator-example" / "example_ct.nii.gz"
MODES = ("fp32", "bf16", "bf16-compile")


def preprocess(path: Path, spacing) -> tuple:
    """The server's pre-processing of ``path`` (BTCV label set): (image [1, D, H, W] float32, seconds)."""
    from monai.transforms import Compose

    from lib.labelsets import load_label_set
    from lib.transforms import load_transforms

    btcv = load_label_set("btcv")
    t = time.perf_counter()
    image = Compose(load_transforms("CT", spacing or btcv.target_spacing, ct_window=btcv.ct_window))({"image": str(path)})["image"]
    return image, time.perf_counter() - t


def build(preset: str, mode: str, device, sam_checkpoint, compile_backend: str = "inductor"):
    """RefSAM3D on ``device`` in eval mode; with ``-compile``, encoder and pixel decoder through ``torch.compile``."""
    import torch

    from lib.model import build_refsam3d
    from lib.training.runner import resolve_text_encoder

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_refsam3d(preset, sam_checkpoint=sam_checkpoint if preset == "vit_b" else None,
                               text_encoder=resolve_text_encoder("minilm"))
    model = model.to(device).eval()
    if mode.endswith("-compile"):
        model.image_encoder = torch.compile(model.image_encoder, backend=compile_backend)
        model.pixel_decoder = torch.compile(model.pixel_decoder, backend=compile_backend)
    return model


def time_mode(model, image, prompts, roi, device, mode: str, repeats: int) -> dict:
    """Warm-up, then medians of one prompt cold / a further prompt cached / 13 cold / 13 cached (seconds)."""
    import torch

    from lib.inference import segment_prompts

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(texts, encodings):
        precision = torch.bfloat16 if mode.startswith("bf16") else None  # as the server's --conf precision
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            labels, _ = segment_prompts(model, image[None], texts, roi, "auto", 1, device, encodings, chunk=8,
                                        precision=precision)
        sync()
        return time.perf_counter() - t, labels

    warm, _ = run(prompts[:1], {})  # cudnn autotuning, compilation, text-encoder cache
    rows: dict = {k: [] for k in ("one_prompt_cold_s", "further_prompt_cached_s", "13_prompts_cold_s", "13_prompts_cached_s")}
    labels = None
    for _ in range(repeats):
        enc: dict = {}
        rows["one_prompt_cold_s"].append(run(prompts[:1], enc)[0])
        rows["further_prompt_cached_s"].append(run(prompts[5:6], enc)[0])
        enc = {}
        t13, labels = run(prompts, enc)
        rows["13_prompts_cold_s"].append(t13)
        rows["13_prompts_cached_s"].append(run(prompts, enc)[0])
    out = {k: round(statistics.median(v), 3) for k, v in rows.items()}
    out["warmup_s"] = round(warm, 2)
    out["windows"] = len(enc)
    out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
    return out | {"_labels": labels}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="vit_b", choices=["vit_b", "small"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--spacing", type=float, default=None, help="mm (default: the BTCV label set's 1.5)")
    p.add_argument("--roi", type=int, default=None, help="window edge in voxels (default: the label set's for the preset)")
    p.add_argument("--image", default=str(CT))
    p.add_argument("--sam-checkpoint", default=None, help="SAM ViT-B file (default: random weights, same speed)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: a quick CPU smoke)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    from lib.labelsets import load_label_set

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    btcv = load_label_set("btcv")
    prompts = list(btcv.prompts.values())
    roi = (args.roi,) * 3 if args.roi else tuple(btcv.roi_size(args.preset))
    image, pre_s = preprocess(Path(args.image), (args.spacing,) * 3 if args.spacing else None)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "preset": args.preset,
              "image_shape": list(image.shape[1:]), "roi": list(roi), "preprocess_s": round(pre_s, 3), "modes": {}}
    print(f"pre-processing {image.shape[1:]} in {pre_s:.2f}s", flush=True)
    reference = None
    for mode in args.modes:
        t = time.perf_counter()
        model = build(args.preset, mode, device, args.sam_checkpoint, args.compile_backend)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        row = time_mode(model, image, prompts, roi, device, mode, args.repeats)
        labels = row.pop("_labels")
        reference = labels if reference is None else reference
        row["agreement_with_" + args.modes[0]] = round(float((labels == reference).float().mean()), 5)
        row["build_and_time_s"] = round(time.perf_counter() - t, 1)
        result["modes"][mode] = row
        print(f"{mode}: " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
