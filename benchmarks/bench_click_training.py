#!/usr/bin/env python
"""Cost of simulated clicks in training: steps of the same real hippocampus batches, clicks off and on, interleaved.

Prints wall-clock and CPU seconds (``time.process_time``, robust to other processes on a shared machine) per
step; the first two steps of each mode are warm-up and left out.

    .venv/bin/python benchmarks/bench_click_training.py --data ../shared/data/msd-hippocampus --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "refsam3d"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MSD hippocampus folder")
    p.add_argument("--init", default=str(REPO / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"))
    p.add_argument("--split-file", default=str(REPO / "benchmarks" / "results" / "hippocampus_split.json"))
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    import torch

    from lib.labelsets import load_label_set
    from lib.training import PromptModelAdapter, TrainConfig, apply_split, entries_from_label_set, msd_datalist
    from lib.training.data import cached_dataset, train_loader, train_transforms
    from lib.training.runner import build_model

    torch.set_num_threads(args.threads)
    label_set = load_label_set("msd_hippocampus")
    cfg = TrainConfig(crop_size=(48, 48, 48), learning_rate=1e-4)
    data = apply_split(msd_datalist(args.data), args.split_file)["train"][: args.cases]
    ds = cached_dataset(data, train_transforms("MR", label_set.target_spacing, (48, 48, 48), cfg), 1.0)
    batches = list(train_loader(ds, 2, 0, 0))[: args.batches]
    model = build_model("small", "minilm", init=args.init)
    adapter = PromptModelAdapter(model, entries_from_label_set(label_set), cfg, roi_size=(48, 48, 48), device="cpu")
    optimizer = adapter.make_optimizer(cfg)
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for clicks in (False, True):
            cfg.clicks = clicks
            for batch in batches:
                wall, cpu = time.perf_counter(), time.process_time()
                loss, _ = adapter.training_loss(batch["image"], batch["label"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                times[clicks].append((time.perf_counter() - wall, time.process_time() - cpu))
    out = {}
    for clicks, values in times.items():
        kept = values[2:]
        wall = sum(v[0] for v in kept) / len(kept)
        cpu = sum(v[1] for v in kept) / len(kept)
        out["clicks" if clicks else "text_only"] = {"steps": len(kept), "wall_s_per_step": round(wall, 3),
                                                    "cpu_s_per_step": round(cpu, 3), "steps_per_cpu_s": round(1 / cpu, 3)}
    out["slowdown_cpu"] = round(out["clicks"]["cpu_s_per_step"] / out["text_only"]["cpu_s_per_step"], 3)
    out["slowdown_wall"] = round(out["clicks"]["wall_s_per_step"] / out["text_only"]["wall_s_per_step"], 3)
    out["threads"] = args.threads
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
