#!/usr/bin/env python
"""MSD hippocampus benchmark: RefSAM3D ``small`` (random init, two text prompts) vs a MONAI CNN baseline.

Both models get the same cases, the same pre-processing and augmentations, the same training loop
(``lib.training.run_training``) and the same wall-clock budget (``--minutes`` each, validation
included) on this machine, and are evaluated by the same code (``lib.evaluation``) on a held-out
test split the training never sees (model selection uses a separate validation split):

* RefSAM3D small: AdamW, Dice + BCE per prompt, prompts "anterior hippocampus" / "posterior hippocampus";
* baseline: MONAI ``DynUNet`` configured like nnU-Net's 3d_fullres plan for this task (patch 40x56x40,
  3x3x3 kernels, 3 poolings, 32-256 filters, instance norm, leaky ReLU, SGD momentum 0.99 Nesterov,
  lr 1e-2, Dice + CE with softmax).  No deep supervision (same loop as RefSAM3D).

It also checks that the text routes: with the two prompts swapped, Dice against the other label.
Both models are evaluated with nnU-Net's mirroring test-time augmentation over the training flips
(left-right; ``--mirror-axes none`` for one pass).

    .venv/bin/python benchmarks/bench_hippocampus.py --minutes 60 --amp-cpu --val-fraction 0   # the documented run (~2 h 5 min)
    .venv/bin/python benchmarks/bench_hippocampus.py --minutes 2         # smoke run
    .venv/bin/python benchmarks/bench_hippocampus.py --reuse refsam3d,baseline   # evaluate the last run's weights again

Writes ``benchmarks/results/hippocampus.{md,json,png}`` (+ the split, per-model evaluations) and the
checkpoints into ``model/benchmarks/`` (the RefSAM3D one is servable as ``model/refsam3d_small.pt``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "refsam3d"))

from lib.cli import add_runtime_arguments, start_runtime  # noqa: E402
from lib.defaults import DEFAULT_LEARNING_RATE  # noqa: E402  (plain Python, no torch)
from lib.training.config import AUGMENTATION_PROFILES  # noqa: E402  (plain Python, no torch)

sys.path.insert(0, str(REPO / "benchmarks"))
from hippocampus_baseline import BASELINE_RECIPE, make_baseline_adapter  # noqa: E402  (plain Python, no torch)

DEFAULT_DATA = (REPO.parent / "shared" / "data" / "msd-hippocampus")

logger = logging.getLogger("bench")

# RefSAM3D recipe used by the benchmark (see docs/training.md for why these values)
REFSAM_RECIPE = dict(
    learning_rate=DEFAULT_LEARNING_RATE["small"],  # from random init; the paper's 1e-4 (vit_b) fine-tunes pre-trained SAM
    weight_decay=1e-5,
    warmup_fraction=0.03,
    batch_size=2,
    num_samples=1,
    grad_clip=1.0,
    crop_size=[48, 48, 48],  # = the label set's small roi: the whole hippocampus crop (padded), as inference sees it
    flip_axes=[0],
    augment=True,
    val_interval=10,  # validate every 10 epochs and at the end (the lr decays to 0: the last model is usually best)
    val_max_cases=0,
    publish="best",
)

# ----------------------------------------------------------------------------------------------- helpers
def make_split(datalist, test_fraction: float, val_fraction: float, seed: int) -> dict:
    from lib.training import split_datalist

    rest, test = split_datalist(datalist, test_fraction, seed=seed)
    train, val = split_datalist(rest, val_fraction, seed=seed + 1)
    return {"train": train, "val": val, "test": test}


def _repo_relative(path: Path) -> str:
    """``benchmarks/results/...`` when inside the repository (a checkpoint that ships stays portable), else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _f(v, digits=3, pct=False):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def table(rows: Sequence[dict], labels: Sequence[str]) -> str:
    head = ["model", "params (trainable)", "iterations", "train+val min", "s/it"] + \
           [f"Dice {l.split()[0]}" for l in labels] + ["mean Dice", "mean NSD", "mean HD95 mm", "swapped-prompt Dice"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ev = r["evaluation"]
        cells = [r["name"], f"{r['params_total'] / 1e6:.2f}M ({r['params_trainable'] / 1e6:.2f}M)", str(r["iterations"]),
                 _f(r["train_minutes"], 1), _f(r["seconds_per_iteration"], 2)]
        cells += [_f(ev["per_label"][l].get("dice_mean")) for l in labels]
        cells += [_f(ev["mean"].get("dice")), _f(ev["mean"].get("nsd")), _f(ev["mean"].get("hd95"), 2),
                  _f(ev.get("routing", {}).get("swapped_dice_mean")) if ev.get("routing") else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_summary(ev: dict, mirror: Sequence[int], args) -> dict:
    """The headline test numbers of one evaluation, as stored in the checkpoint's ``extra``."""
    return {"split_part": "test", "num_cases": ev["num_cases"], "mirror_axes": list(mirror),
            "largest_component": bool(args.largest_component), "nsd_tolerance_mm": args.nsd_tolerance,
            "mean": dict(ev["mean"]),
            "per_label": {n: {"dice": v.get("dice_mean"), "nsd": v.get("nsd_mean"), "hd95": v.get("hd95_mean")}
                          for n, v in ev["per_label"].items()},
            "swapped_prompt_dice_mean": ev.get("routing", {}).get("swapped_dice_mean")}


def run_one(name, adapter, recipe, split, label_set, minutes, args, out_dir, ckpt_path, extra, mirror=(), train=True):
    """Train (or, ``train=False``, reuse the checkpoint + train_stats of an earlier run), then evaluate on the test
    split with test-time mirroring over ``mirror`` (validation during training is one pass, for both models)."""
    import torch

    from lib.evaluation import evaluate, write_reports
    from lib.training import TrainConfig, TrainData, TrainOutput, run_training

    cfg = TrainConfig.from_mapping({**recipe, "max_minutes": minutes, "max_epochs": args.max_epochs,
                                    "threads": args.threads, "device": args.device, "seed": args.seed,
                                    "log_interval_s": 30.0, "amp_cpu": args.amp_cpu,
                                    **({"learning_rate": args.lr} if args.lr and name.startswith("RefSAM3D") else {})})
    logger.info(f"=== {name}: {minutes} min budget, {len(split['train'])} train / {len(split['val'])} val cases; "
                f"{adapter.describe()}")
    stats_path = out_dir / f"{ckpt_path.stem}.train_stats.json"
    if train:
        t0 = time.time()
        data = TrainData(split["train"], split["val"], label_set.modality, label_set.target_spacing, cfg.crop_size)
        stats = run_training(adapter, cfg, data, TrainOutput(
            ckpt_path, stats_path=stats_path, events_dir=ckpt_path.parent / "events" / ckpt_path.stem,
            checkpoint_extra=extra, progress=not args.no_progress))
        train_s = time.time() - t0
    else:
        if not (ckpt_path.is_file() and stats_path.is_file()):
            raise SystemExit(f"--reuse {name}: needs {ckpt_path} and {stats_path} from an earlier run")
        stats = json.loads(stats_path.read_text())
        train_s = float(stats.get("elapsed_s") or 0.0)
        logger.info(f"reusing {ckpt_path} (training run {stats.get('run_id')}, {train_s / 60:.1f} min)")
    # evaluate the published (best) weights on the held-out test cases
    if name.startswith("RefSAM3D"):
        from lib.model import load_checkpoint
        from lib.training import PromptModelAdapter

        best = load_checkpoint(str(ckpt_path), text_encoder=adapter.model.text_encoder)
        evaluator = PromptModelAdapter(best, adapter.entries, cfg, roi_size=adapter.roi_size, device=cfg.device,
                                       mirror_axes=mirror)
    else:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        adapter.model.load_state_dict(state["state_dict"])
        evaluator = adapter
        evaluator.mirror_axes = tuple(mirror)
    evaluator.model.eval()
    ev = evaluate(evaluator, split["test"], [e.name for e in adapter.entries], [e.index for e in adapter.entries],
                  label_set.modality, label_set.target_spacing, nsd_tolerance=args.nsd_tolerance,
                  cross_prompts=name.startswith("RefSAM3D"), progress=not args.no_progress,
                  description=f"evaluate {name}", info={"model": name, "checkpoint": str(ckpt_path)},
                  largest_component=args.largest_component)
    write_reports(ev, out_dir, stem=f"hippocampus_{ckpt_path.stem}", title=f"{name} on MSD hippocampus (test split)")
    if name.startswith("RefSAM3D"):  # the servable file carries its own test result (checkpoints/README.md)
        from lib.model import update_checkpoint_extra

        key = "test_evaluation" if mirror else "test_evaluation_single_pass"
        update_checkpoint_extra(ckpt_path, **{key: test_summary(ev, mirror, args)})
    desc = adapter.describe()
    its = int(stats.get("iteration") or 0)
    return {
        "name": name, "checkpoint": str(ckpt_path), "recipe": cfg.to_dict(), "iterations": its,
        "training_run": stats.get("run_id"), "reused": not train, "mirror_axes": list(mirror),
        "epochs": stats.get("epoch"), "train_minutes": train_s / 60.0,
        "seconds_per_iteration": (1.0 / stats["iterations_per_s"]) if stats.get("iterations_per_s") else None,
        "best_val_mean_dice": stats.get("best_metric"), "best_epoch": stats.get("best_metric_epoch"),
        "val_history": stats.get("history"),
        "params_total": desc["parameters"]["total"], "params_trainable": desc["parameters"]["trainable"],
        "evaluation": ev,
    }


def stored_row(previous: dict | None, previous_file: Path, prefix: str, split: dict, mirror: Sequence[int], args) -> dict:
    """``--reuse`` of a model whose checkpoint is gone: its row from the last ``hippocampus.json``, accepted only if
    that run evaluated the same test cases the same way (mirroring, largest component, NSD tolerance)."""
    row = next((r for r in (previous or {}).get("models", []) if r["name"].startswith(prefix)), None)
    if row is None:
        raise SystemExit(f"--reuse {prefix}: no checkpoint in --checkpoint-dir and no {prefix} result in {previous_file}")
    ev = row["evaluation"]
    same = (previous["split"].get("test") == [d["id"] for d in split["test"]]
            and list(row.get("mirror_axes") or []) == list(mirror)
            and bool(ev.get("largest_component")) == bool(args.largest_component)
            and float(ev.get("nsd_tolerance_mm", -1)) == float(args.nsd_tolerance))
    if not same:
        raise SystemExit(f"--reuse {prefix}: the stored result in {previous_file} was evaluated on other test cases or "
                         "with other test-time settings; its checkpoint is needed to evaluate it again")
    trained_with = row.get("recipe", {}).get("augmentation", "paper")
    if trained_with != args.augmentation:
        raise SystemExit(f"--reuse {prefix}: the stored result was trained with --augmentation {trained_with}, "
                         f"not {args.augmentation}; train it again for a like-for-like comparison")
    when = previous.get("environment", {}).get("date", "an earlier run")
    return {**row, "reused": True, "stored_result": f"the benchmark run of {when} (its checkpoint is not here)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget per model")
    p.add_argument("--models", default="refsam3d,baseline", help="comma-separated: refsam3d, baseline")
    p.add_argument("--reuse", default="", help="comma-separated models not to train again: evaluate the checkpoint and "
                                                "train_stats an earlier run left in --checkpoint-dir / --out")
    p.add_argument("--mirror-axes", default="train",
                   help="test-time mirroring for both models (nnU-Net's default): 'train' = the training flips "
                        "(left-right), 'none', or axes like '0,1'")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out test split (never trained on)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="of the rest: validation for model selection")
    p.add_argument("--max-cases", type=int, default=0, help="use only N cases (quick checks)")
    p.add_argument("--max-epochs", type=int, default=10000)
    p.add_argument("--lr", type=float, default=None, help="override RefSAM3D's learning rate")
    p.add_argument("--amp-cpu", action="store_true", help="bf16 autocast on the CPU for both models")
    p.add_argument("--seed", type=int, default=0, help="model initialisation and training (crops, augmentation)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="test/validation split; keep it fixed and vary --seed to measure run-to-run noise")
    p.add_argument("--largest-component", action="store_true",
                   help="post-process both models: keep each label's largest connected piece")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="mm")
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--model-overrides", default="{}",
                   help='JSON overrides of the small preset, e.g. \'{"use_rel_pos": false}\' (default: the preset as is)')
    p.add_argument("--augmentation", default="paper", choices=AUGMENTATION_PROFILES,
                   help="training augmentation of both models: the paper's list, nnU-Net v2's default set or "
                        "the flips alone")
    p.add_argument("--recipe-overrides", default="{}",
                   help='JSON overrides of the RefSAM3D training recipe (any TrainConfig field), e.g. \'{"weight_decay": 0.05}\'')
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--checkpoint-dir", default=str(REPO / "model" / "benchmarks"))
    add_runtime_arguments(p)
    return p.parse_args(argv)


def run_models(args: argparse.Namespace, split: dict, label_set, entries, mirror: Sequence[int], out_dir: Path) -> list[dict]:
    """Train (or reuse) and evaluate the models ``--models`` names; one result row each."""
    import torch

    from lib.training import PromptModelAdapter, TrainConfig
    from lib.training.runner import build_model, checkpoint_extra

    ckpt_dir = Path(args.checkpoint_dir)
    previous_file = out_dir / "hippocampus.json"
    previous = json.loads(previous_file.read_text()) if previous_file.is_file() else None
    wanted = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    reuse = {m.strip().lower() for m in args.reuse.split(",") if m.strip()}
    rows = []
    if "refsam3d" in wanted:
        recipe = {**REFSAM_RECIPE, "augmentation": args.augmentation, **json.loads(args.recipe_overrides or "{}")}
        overrides = json.loads(args.model_overrides or "{}")
        model = build_model("small", args.text_encoder, seed=args.seed, **overrides)
        roi = tuple(label_set.roi_size("small"))
        adapter = PromptModelAdapter(model, entries, TrainConfig.from_mapping(recipe), roi_size=roi,
                                     device=args.device, seed=args.seed)
        extra = checkpoint_extra(label_set, entries, "small", roi, "benchmarks/bench_hippocampus.py",
                                 split_file=_repo_relative(out_dir / "hippocampus_split.json"), model_overrides=overrides)
        rows.append(run_one("RefSAM3D small", adapter, recipe, split, label_set, args.minutes, args, out_dir,
                            ckpt_dir / "refsam3d_small_hippocampus.pt", extra, mirror, train="refsam3d" not in reuse))
    baseline_ckpt = ckpt_dir / "dynunet_hippocampus.pt"
    if "baseline" in wanted and "baseline" in reuse and not baseline_ckpt.is_file():
        rows.append(stored_row(previous, previous_file, "DynUNet", split, mirror, args))
    elif "baseline" in wanted:
        recipe = {**BASELINE_RECIPE, "augmentation": args.augmentation}
        torch.manual_seed(args.seed)
        adapter = make_baseline_adapter(entries, recipe["crop_size"], device=args.device)
        rows.append(run_one("DynUNet (nnU-Net-like)", adapter, recipe, split, label_set, args.minutes, args,
                            out_dir, baseline_ckpt, {"label_set_name": label_set.name},
                            mirror, train="baseline" not in reuse))
    return rows


def verdict_lines(rows: Sequence[dict]) -> list[str]:
    """RefSAM3D's mean Dice against the 0.90 target and the baseline, and the swapped-prompt check."""
    ref = next((r for r in rows if r["name"].startswith("RefSAM3D")), None)
    base = next((r for r in rows if r["name"].startswith("DynUNet")), None)
    if not ref:
        return []
    d = ref["evaluation"]["mean"].get("dice") or 0.0
    verdict = [f"RefSAM3D mean Dice {d:.3f} {'>=' if d >= 0.90 else '<'} 0.90 target"]
    if base:
        b = base["evaluation"]["mean"].get("dice") or 0.0
        verdict.append(f"{'>=' if d >= b else '<'} baseline {b:.3f}")
    sw = ref["evaluation"].get("routing", {}).get("swapped_dice_mean")
    if sw is not None:
        note = "" if d >= 0.5 else " (not meaningful: the model does not segment yet)"
        verdict.append(f"swapped-prompt Dice {sw:.3f} {'<' if sw < 0.1 else '>='} 0.1{note}")
    return verdict


def environment(args: argparse.Namespace, started: float) -> dict:
    """Where and how the benchmark ran, with a copy-pasteable command."""
    import torch

    from lib.training import resolve_device

    device = resolve_device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "cpu": _cpu_name(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "device": f"{device.type} ({device_name})", "minutes_per_model": args.minutes,
            "command": "python " + shlex.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),  # copy-pasteable
            "total_minutes": round((time.time() - started) / 60, 1)}


def report_markdown(args: argparse.Namespace, env: dict, split: dict, mirror: Sequence[int], rows: Sequence[dict],
                    labels: Sequence[str], verdict: Sequence[str]) -> str:
    """``hippocampus.md``: the setting, the results table, the verdict and RefSAM3D's routing matrix."""
    report = [
        "# MSD hippocampus: RefSAM3D small vs DynUNet (nnU-Net 3d_fullres-like)", "",
        f"- command: `{env['command']}`",
        f"- {env['date']}, {env['cpu']} ({env['cpu_count']} cores), {env['threads']} torch threads, "
        f"device {env['device']}, "
        f"{args.minutes} min training per model (validation included)",
        f"- split (seed {args.split_seed}), training seed {args.seed}: {len(split['train'])} train, "
        f"{len(split['val'])} validation (model selection), "
        f"{len(split['test'])} held-out test cases (`hippocampus_split.json`)",
        f"- test metrics on whole volumes (sliding window"
        + (f", mirroring test-time augmentation over axes {list(mirror)}" if mirror else "")
        + (", largest connected component per label" if args.largest_component else "")
        + f"); NSD tolerance {args.nsd_tolerance} mm",
        *[f"- {r['name']}: " + (f"result reused from {r['stored_result']}" if r.get("stored_result") else
                                 f"weights and training statistics reused from training run {r['training_run']}")
          for r in rows if r.get("reused")],
        "",
        table(rows, labels), "", "Verdict: " + "; ".join(verdict) if verdict else "", "",
    ]
    ref = next((r for r in rows if r["name"].startswith("RefSAM3D")), None)
    if ref and ref["evaluation"].get("routing"):
        r = ref["evaluation"]["routing"]
        report += ["Routing (RefSAM3D, mean Dice of the mask of prompt row vs ground truth of label column):", "",
                   "| prompt \\ label | " + " | ".join(r["prompts"]) + " |", "|---|" + "---|" * len(r["prompts"])]
        for name, row in zip(r["prompts"], r["dice_matrix"]):
            report.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        report.append("")
    return "\n".join(report)


def main(argv=None) -> int:
    args = parse_args(argv)
    start_runtime(args)
    import warnings

    warnings.filterwarnings("ignore", message="Using a non-tuple sequence")

    from lib.evaluation import plot_results
    from lib.labelsets import load_label_set
    from lib.parsing import parse_axes
    from lib.training import entries_from_label_set, msd_datalist, save_split

    data = Path(args.data)
    if not (data / "dataset.json").exists():
        raise SystemExit(f"MSD hippocampus not found at {data} (expected ../shared/data/msd-hippocampus)")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    label_set = load_label_set("msd_hippocampus")
    entries = entries_from_label_set(label_set)
    labels = [e.name for e in entries]

    datalist = msd_datalist(data)
    if args.max_cases:
        datalist = datalist[: args.max_cases]
    split = make_split(datalist, args.test_fraction, args.val_fraction, args.split_seed)
    save_split(out_dir / "hippocampus_split.json", split)
    logger.info(f"split: {len(split['train'])} train, {len(split['val'])} val, {len(split['test'])} test "
                f"-> {out_dir / 'hippocampus_split.json'}")
    mirror = (tuple(REFSAM_RECIPE["flip_axes"]) if args.mirror_axes.strip().lower() == "train"
              else parse_axes(args.mirror_axes))  # test-time only: validation during training stays one pass
    started = time.time()
    rows = run_models(args, split, label_set, entries, mirror, out_dir)
    verdict = verdict_lines(rows)
    env = environment(args, started)
    result = {"environment": env, "split": {k: [d["id"] for d in v] for k, v in split.items()},
              "labels": labels, "models": rows, "verdict": verdict}
    (out_dir / "hippocampus.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "hippocampus.md").write_text(report_markdown(args, env, split, mirror, rows, labels, verdict))
    if rows:
        plot_results({r["name"]: r["evaluation"] for r in rows}, out_dir / "hippocampus.png",
                     title=f"MSD hippocampus test split, {args.minutes} min CPU training per model")
    print("\n" + table(rows, labels) + "\n")
    for v in verdict:
        print(v)
    print(f"\nwrote {out_dir / 'hippocampus.md'}, {out_dir / 'hippocampus.json'}, {out_dir / 'hippocampus.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
