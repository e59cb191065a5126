#!/usr/bin/env python
"""Train RefSAM3D on an MSD-layout folder into a checkpoint the server serves as is.

Same training code as the server's ``POST /train/refsam3d`` (``lib.training.run_training``).

Example (hippocampus, small preset from random initialisation, 60 minutes on the CPU)::

    .venv/bin/python scripts/train.py --data ../shared/data/msd-hippocampus --label-set msd_hippocampus \\
        --preset small --text-encoder minilm --output model/refsam3d_small.pt --minutes 60 --epochs 10000 \\
        --val-split 0 --amp-cpu     # the benchmark's recipe on all cases (lr 1e-3 is the small preset's default)

Distributed (DDP, one process per GPU; gloo on CPUs): ``torchrun --nproc_per_node 4 scripts/train.py ...``;
several nodes: ``torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint host:29400
scripts/train.py ...`` on each node. ``--batch-size`` is per process (docs/training.md, "Distributed training").

Serve the result: ``monailabel start_server --app apps/refsam3d --studies ... --conf preset small
--conf label_set msd_hippocampus --conf text_encoder minilm`` with the file at ``model/refsam3d_small.pt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "refsam3d"))

from lib.cli import add_runtime_arguments, start_runtime  # noqa: E402
from lib.training.config import AUGMENTATION_PROFILES  # noqa: E402  (plain Python, no torch)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, help="MSD-layout folder (dataset.json, imagesTr, labelsTr)")
    d.add_argument("--label-set", default="msd_hippocampus", help="built-in label set name or JSON file")
    d.add_argument("--labels", default="all", help="comma-separated label names to train (default: all)")
    d.add_argument("--split-file", help="JSON {'train': [ids], 'val': [ids], ...}; default: random split by --val-split")
    d.add_argument("--train-part", default="train", help="part of --split-file to train on")
    d.add_argument("--val-part", default="val", help="part of --split-file to validate (select the best model) on")
    d.add_argument("--val-split", type=float, default=0.1, help="fraction held out for validation (no --split-file)")
    d.add_argument("--max-cases", type=int, default=0, help="use only the first N cases (quick runs)")
    m = p.add_argument_group("model")
    m.add_argument("--preset", default="small", choices=["small", "vit_b"])
    m.add_argument("--text-encoder", default="minilm", help="HF name, local folder, or 'minilm' (offline)")
    m.add_argument("--sam-checkpoint", default=None, help="sam_vit_b_01ec64.pth (vit_b)")
    m.add_argument("--init", default="fresh", help="'fresh' or a RefSAM3D checkpoint to fine-tune")
    m.add_argument("--roi", default=None, help="inference/validation window, e.g. 48 or 48,64,48 (default: label set)")
    m.add_argument("--output", default=None, help="checkpoint path (default model/refsam3d_<preset>.pt)")
    m.add_argument("--run-dir", default=None, help="TensorBoard events + train_stats.json (default <output>.run/)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget incl. validation (0 = none)")
    t.add_argument("--iterations", type=int, default=0, help="max iterations (0 = none)")
    t.add_argument("--crop", default=None, help="training crop (default: the roi)")
    t.add_argument("--batch-size", type=int, default=2, help="volumes per step per process (torchrun: per rank)")
    t.add_argument("--num-samples", type=int, default=1, help="crops per volume per step")
    t.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate (default 1e-3 for small from scratch, 1e-4 = the paper's for vit_b)")
    t.add_argument("--weight-decay", type=float, default=1e-5)
    t.add_argument("--warmup", type=float, default=0.03, help="warm-up fraction of the run")
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--max-prompts", type=int, default=0)
    t.add_argument("--negative-prompts", default="",
                   help="comma-separated prompts of structures never present (default: the built-in vocabulary)")
    t.add_argument("--negative-prompts-per-step", type=int, default=2, help="absent prompts per step (0 = none)")
    t.add_argument("--no-prompt-variety", action="store_true",
                   help="always ask by the canonical prompt (no synonyms or templates: the behaviour before issue 25)")
    t.add_argument("--flip-axes", default="0", help="mirroring axes (RAS; 0 = left-right), '' for none")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--augmentation", default="paper", choices=AUGMENTATION_PROFILES,
                   help="paper: the paper's augmentations; nnunet: nnU-Net v2's default set; flip: mirroring only "
                        "(docs/training.md)")
    t.add_argument("--val-interval", type=int, default=1)
    t.add_argument("--publish", default="best", choices=["best", "last"])
    t.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="mixed precision on CUDA")
    t.add_argument("--amp-cpu", action="store_true",
                   help="bf16 autocast on the CPU (fast with AMX / AVX512-BF16: 1.9x the steps per hour on an AMX Xeon)")
    t.add_argument("--no-clicks", action="store_true",
                   help="train on text prompts only (default: simulated clicks too, see docs/training.md)")
    t.add_argument("--click-mix", default=None,
                   help="fractions text only, text + clicks, clicks only per (crop, prompt), e.g. 0.3,0.4,0.3 (the default)")
    t.add_argument("--click-rounds", type=int, default=None, help="most click rounds per step (default 3)")
    t.add_argument("--seed", type=int, default=0)
    add_runtime_arguments(t)
    t.add_argument("--config", default=None, help="JSON file of TrainConfig options (overrides the flags)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start_runtime(args)
    from lib.training.distributed import init_distributed, teardown

    init_distributed(args.device)  # under torchrun: join the process group; else world size 1
    try:
        code = train(args)
    except BaseException:
        teardown(failed=True)
        raise
    teardown()
    return code


def train(args: argparse.Namespace) -> int:
    from lib.labelsets import load_label_set
    from lib.training import (PromptModelAdapter, TrainConfig, TrainData, TrainOutput, apply_split,
                              entries_from_label_set, msd_datalist, run_training, split_datalist)
    from lib.defaults import DEFAULT_LEARNING_RATE
    from lib.parsing import parse_size
    from lib.training.distributed import is_main_process
    from lib.training.runner import build_model, checkpoint_extra

    label_set = load_label_set(args.label_set)
    roi = parse_size(args.roi) or tuple(label_set.roi_size(args.preset))
    values = {
        "max_epochs": args.epochs, "max_minutes": args.minutes, "max_iterations": args.iterations,
        "crop_size": args.crop or list(roi), "batch_size": args.batch_size, "num_samples": args.num_samples,
        "learning_rate": args.lr if args.lr else DEFAULT_LEARNING_RATE[args.preset],  # lib/defaults.py
        "weight_decay": args.weight_decay, "warmup_fraction": args.warmup,
        "grad_clip": args.grad_clip, "max_prompts": args.max_prompts, "negative_prompts": args.negative_prompts,
        "negative_prompts_per_step": args.negative_prompts_per_step, "flip_axes": args.flip_axes,
        "prompt_variety": not args.no_prompt_variety,
        "augment": not args.no_augment, "augmentation": args.augmentation,
        "val_split": args.val_split, "val_interval": args.val_interval,
        "publish": args.publish, "amp": args.amp != "off", "amp_cpu": args.amp_cpu,
        "device": args.device, "threads": args.threads,
        "seed": args.seed, "labels": args.labels,
        "log_interval_s": 60.0 if not args.no_progress else 10.0,
    }
    values["clicks"] = not args.no_clicks
    if args.click_mix:
        mix = [float(v) for v in args.click_mix.split(",")]
        if len(mix) != 3:
            raise SystemExit("--click-mix needs three fractions: text only, text + clicks, clicks only")
        values.update(zip(("click_text_only", "click_text_and_clicks", "click_only"), mix))
    if args.click_rounds:
        values["click_max_rounds"] = args.click_rounds
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    cfg = TrainConfig.from_mapping(values)

    datalist = msd_datalist(args.data)
    if args.split_file:
        parts = apply_split(datalist, args.split_file)
        train_list, val_list = parts[args.train_part], parts.get(args.val_part, [])
    else:
        if args.max_cases:
            datalist = datalist[: args.max_cases]
        train_list, val_list = split_datalist(datalist, cfg.val_split, seed=cfg.seed)
    if args.max_cases and args.split_file:
        train_list = train_list[: args.max_cases]

    output = Path(args.output) if args.output else REPO / "model" / f"refsam3d_{args.preset}.pt"
    run_dir = Path(args.run_dir) if args.run_dir else output.with_name(output.stem + ".run")
    run_dir.mkdir(parents=True, exist_ok=True)
    entries = entries_from_label_set(label_set, cfg.labels)
    model = build_model(args.preset, args.text_encoder, args.sam_checkpoint, init=args.init, seed=cfg.seed)
    adapter = PromptModelAdapter(model, entries, cfg, roi_size=roi, device=cfg.device, seed=cfg.seed)
    logging.getLogger("train").info(f"model: {adapter.describe()}")
    extra = checkpoint_extra(label_set, entries, args.preset, roi, "scripts/train.py",
                             data=str(Path(args.data).resolve()), train_cases=[d["id"] for d in train_list],
                             val_cases=[d["id"] for d in val_list])
    started_from = args.init and args.init != "fresh" and Path(args.init).resolve() == output.resolve()
    data = TrainData(train_list, val_list, label_set.modality, label_set.target_spacing, cfg.crop_size or roi,
                     ct_window=label_set.ct_window if label_set.modality == "CT" else None)
    stats = run_training(adapter, cfg, data, TrainOutput(
        output, stats_path=run_dir / "train_stats.json", events_dir=run_dir / "events", checkpoint_extra=extra,
        fine_tunes_published=bool(started_from), progress=not args.no_progress))
    if not is_main_process():  # rank 0 reports
        return 0
    print(json.dumps({"checkpoint": str(output), "best_val_mean_dice": stats.get("best_metric"),
                      "best_epoch": stats.get("best_metric_epoch"), "iterations": stats.get("iteration"),
                      "elapsed_s": stats.get("elapsed_s"), "stop_reason": stats.get("stop_reason"),
                      "stats": str(run_dir / "train_stats.json"),
                      "world_size": stats.get("world_size")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
