"""The training loop shared by ``POST /train/refsam3d``, ``scripts/train.py`` and the benchmark.

No MONAI Label import here: the server's train task and the command line call :func:`run_training`.

- AdamW on the adapter's trainable parameters, linear warm-up then linear decay; the schedule runs on
  ``max(iterations done / planned, minutes used / budget)`` so a wall-clock budget also ends at lr 0;
- mixed precision on CUDA (bf16 where supported, else fp16 with a gradient scaler);
- validation Dice per label on whole volumes (sliding window) every ``val_interval`` epochs;
- the best model is published atomically (``save_checkpoint`` writes a temporary file and renames),
  so a run killed at any moment leaves the previously published file loadable;
- progress: log lines with iterations/s and ETA, an optional tqdm bar, TensorBoard events and a
  ``train_stats.json`` (the file MONAI Label's ``/train/`` reports) rewritten while training.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from lib.weights_history import WeightsHistory

from .adapters import SegmentationAdapter, resolve_device
from .config import TrainConfig
from .data import cached_dataset, train_loader, train_transforms, val_transforms
from .distributed import Ranks, all_reduce_sums, any_rank, current, loss_module, max_over_ranks, mean_over_ranks, \
    rank_device, rank_seed, shard  # world size 1 (one process): every one of these is a no-op
from .prompts import label_map_to_binary

logger = logging.getLogger("lib.training")


class StopTraining(Exception):
    pass


def _fmt_td(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class LinearSchedule:
    """lr = base * warm-up ramp * (1 - progress), progress in [0, 1] (iterations and/or wall clock)."""

    def __init__(self, optimizer, base_lr: float, warmup_fraction: float, min_fraction: float = 0.0):
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.warmup = max(0.0, min(0.5, warmup_fraction))
        self.min_fraction = min_fraction

    def factor(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        ramp = min(1.0, (p + 1e-3) / self.warmup) if self.warmup > 0 else 1.0
        decay = 1.0 - p if self.warmup <= 0 else min(1.0, (1.0 - p) / (1.0 - self.warmup))
        return max(self.min_fraction, ramp * decay)

    def step(self, progress: float) -> float:
        lr = self.base_lr * self.factor(progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr


class _Tensorboard:
    def __init__(self, log_dir: str | None):
        self.writer = None
        if log_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(log_dir))
            except Exception as exc:  # tensorboard missing: keep training
                logger.warning(f"TensorBoard events disabled: {exc}")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and value is not None and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def validate(adapter: SegmentationAdapter, dataset, max_cases: int = 0, ranks: Ranks | None = None) -> dict:
    """Dice per label on whole volumes -> ``{"mean_dice", "dice": {label: mean}, "cases": n, "seconds"}``.

    Distributed (``ranks``): each rank holds its share of the cases; the per-label sums and counts are added
    up over the ranks, so every rank gets the Dice of all cases.
    """
    from lib.evaluation import dice_per_label

    t0 = time.time()
    adapter.model.eval()
    per_label: dict[str, list[float]] = {e.name: [] for e in adapter.entries}
    n = len(dataset) if not max_cases else min(max_cases, len(dataset))
    with torch.no_grad():
        for i in range(n):
            item = dataset[i]
            image = torch.as_tensor(item["image"]).float()[None]
            gt = label_map_to_binary(torch.as_tensor(item["label"]), adapter.entries)
            pred = adapter.segment(image).to("cpu")
            for e, d in zip(adapter.entries, dice_per_label(pred, gt)):
                per_label[e.name].append(d)
    adapter.model.train()
    if ranks is not None and ranks.distributed:
        return _reduced_dice(per_label, ranks, t0)
    dice = {k: float(np.mean(v)) for k, v in per_label.items() if v}
    return {"mean_dice": float(np.mean(list(dice.values()))) if dice else 0.0, "dice": dice, "cases": n,
            "seconds": round(time.time() - t0, 2)}


def _reduced_dice(per_label: dict[str, list[float]], ranks: Ranks, t0: float) -> dict:
    sums = {f"sum/{k}": float(np.sum(v)) for k, v in per_label.items()}
    sums.update({f"count/{k}": float(len(v)) for k, v in per_label.items()})
    total = all_reduce_sums(sums, ranks)
    dice = {k: total[f"sum/{k}"] / total[f"count/{k}"] for k in per_label if total[f"count/{k}"] > 0}
    cases = int(max((total[f"count/{k}"] for k in per_label), default=0))
    return {"mean_dice": float(np.mean(list(dice.values()))) if dice else 0.0, "dice": dice, "cases": cases,
            "seconds": round(time.time() - t0, 2)}


def run_training(
    adapter: SegmentationAdapter,
    train_datalist: Sequence[dict],
    val_datalist: Sequence[dict],
    cfg: TrainConfig,
    modality: str,
    target_spacing: Sequence[float],
    crop_size: Sequence[int],
    publish_path: str | os.PathLike | None,
    stats_path: str | os.PathLike | None = None,
    events_dir: str | os.PathLike | None = None,
    checkpoint_extra: dict | None = None,
    progress: bool = False,
    start_from_published: bool = False,
    run_id: str | None = None,
    on_epoch: Callable[[dict], Any] | None = None,
    ct_window: Sequence[float] | None = None,
    run_info: dict | None = None,
) -> dict:
    """Train ``adapter`` and publish its best state to ``publish_path``; returns the final stats.

    ``run_info``: extra keys for the stats (how the run was started, e.g. the train task's ``multi_gpu``).

    ``start_from_published``: the model was loaded from the file at ``publish_path`` -- with
    ``cfg.validate_start`` its validation Dice is measured first and must be beaten to publish.
    """
    t_start = time.time()
    run_id = run_id or datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    if cfg.threads and cfg.threads > 0:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    ranks = current()  # torchrun / multi_gpu: this rank; else world size 1
    device = rank_device(cfg.device, ranks)
    adapter.to(device)
    if ranks.distributed and hasattr(adapter, "rng"):  # each rank draws its own prompts and clicks
        adapter.rng.seed(rank_seed(cfg.seed, ranks))
    use_cuda = device.type == "cuda"
    amp_dtype = None
    if cfg.amp and use_cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cudnn.benchmark = True
    elif cfg.amp_cpu and device.type == "cpu":
        amp_dtype = torch.bfloat16  # CPUs with AMX/AVX512-BF16 run bf16 matmuls much faster
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda and amp_dtype == torch.float16)

    if not train_datalist:
        raise ValueError("no training cases (need images with final labels)")
    crop = tuple(int(c) for c in crop_size)
    logger.info(f"Training run {run_id}: {len(train_datalist)} training / {len(val_datalist)} validation cases; "
                f"crop {crop}; labels {[e.name for e in adapter.entries]}; device {device}; "
                f"threads {torch.get_num_threads()}; world_size {ranks.world_size}; config {cfg}")

    t_cache = time.time()
    train_ds = cached_dataset(shard(train_datalist, ranks, even=True, seed=cfg.seed),
                              train_transforms(modality, target_spacing, crop, cfg, ct_window), cfg.cache_rate)
    val_ds = cached_dataset(shard(val_datalist[: cfg.val_max_cases or None], ranks, even=False),
                            val_transforms(modality, target_spacing, ct_window=ct_window),
                            cfg.cache_rate) if val_datalist else None
    loader = train_loader(train_ds, cfg.batch_size, cfg.num_workers, rank_seed(cfg.seed, ranks))
    ddp = loss_module(adapter, ranks)  # DDP on the loss (rank 0's weights broadcast); None for one process
    logger.info(f"Cached pre-processed volumes in {time.time() - t_cache:.1f}s")

    params = adapter.parameters_to_optimise()
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = adapter.make_optimizer(cfg)
    base_lr = float(optimizer.param_groups[0]["lr"])
    schedule = LinearSchedule(optimizer, base_lr, cfg.warmup_fraction, cfg.min_lr_fraction)

    iters_per_epoch = max(1, len(loader))
    planned_iters = cfg.max_epochs * iters_per_epoch
    if cfg.max_iterations:
        planned_iters = min(planned_iters, cfg.max_iterations)
    budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes and cfg.max_minutes > 0 else None

    # only rank 0 writes TensorBoard events and the stats file, and publishes
    tb = _Tensorboard(str(events_dir) if events_dir and ranks.is_main else None)
    stats_file = Path(stats_path) if stats_path and ranks.is_main else None
    publish = Path(publish_path) if publish_path else None

    state: dict[str, Any] = {
        "run_id": run_id, "status": "RUNNING", "start_ts": int(t_start), "epoch": 0, "max_epochs": cfg.max_epochs,
        "iteration": 0, "planned_iterations": planned_iters, "iterations_per_epoch": iters_per_epoch,
        "budget_minutes": cfg.max_minutes or None, "best_metric": None, "best_metric_epoch": None,
        "total_epochs": cfg.max_epochs, "total_iterations": planned_iters,  # OHIF: epoch / total_epochs
        "published": None, "published_epoch": None, "publish_path": str(publish) if publish else None,
        "archived_version": None, "published_without_validation": False,
        "train_cases": len(train_datalist), "val_cases": len(val_datalist), "config": cfg.to_dict(),
        "world_size": ranks.world_size, "global_batch_size": cfg.batch_size * ranks.world_size,
        "val_studies": [d.get("id") or Path(str(d.get("image"))).name for d in val_datalist],
        "validation": ("Dice on held-out labelled studies (never trained on)" if val_datalist
                       else "none: no held-out labelled study (label more studies or set val_split)"),
        "model": adapter.describe(), "train": {}, "eval": {}, "history": [], **(run_info or {}),
    }

    def progress_fraction(it: int) -> float:
        p = it / max(1, planned_iters)
        if budget_s:  # distributed: the latest clock of all ranks, so every rank steps with one lr
            p = max(p, max_over_ranks(time.time() - t_start, ranks) / budget_s)
        return p

    def write_stats(final: bool = False) -> dict:
        elapsed = time.time() - t_start
        state["elapsed_s"] = round(elapsed, 1)
        state["current_time" if not final else "total_time"] = _fmt_td(elapsed)
        if final:
            state.pop("current_time", None)
        if stats_file:
            _write_json_atomic(stats_file, state)
        return state

    def do_publish(epoch: int, metrics: dict | None) -> None:
        if publish is None or not ranks.is_main:
            return
        if val_ds is None:
            if not cfg.publish_unvalidated:
                logger.warning("Not publishing: no validation study and publish_unvalidated is false")
                return
            state["published_without_validation"] = True
            logger.warning(f"Publishing WITHOUT validation (no held-out labelled study): epoch {epoch}; the weights "
                           "served before this run are kept as a version")
        if state["published"] is None:  # the first publish of this run keeps what it replaces
            kept = WeightsHistory(publish, keep=cfg.keep_versions).archive_current(f"replaced by training run {run_id}")
            state["archived_version"] = kept["id"] if kept else None
        extra = dict(checkpoint_extra or {})
        extra["training"] = {"run_id": run_id, "epoch": epoch, "iteration": state["iteration"],
                             "val": metrics, "config": cfg.to_dict(),
                             "time": datetime.datetime.now().isoformat(timespec="seconds")}
        publish.parent.mkdir(parents=True, exist_ok=True)
        adapter.save(publish, extra=extra)
        state["published"] = datetime.datetime.now().isoformat(timespec="seconds")
        state["published_epoch"] = epoch
        logger.info(f"Published model (epoch {epoch}"
                    f"{', val mean Dice %.4f' % metrics['mean_dice'] if metrics else ''}) -> {publish}")

    write_stats()  # at once: viewers see the new run (epoch 0 of total_epochs), not the last run's stats
    best = -math.inf
    if start_from_published and val_ds is not None and cfg.validate_start and cfg.publish == "best":
        m0 = validate(adapter, val_ds, cfg.val_max_cases, ranks)
        best = m0["mean_dice"]
        state["best_metric"], state["best_metric_epoch"] = best, 0
        state["eval"] = {"metrics": {"val_mean_dice": best, **{f"val_dice_{k}": v for k, v in m0["dice"].items()}},
                         "key_metric_name": "val_mean_dice", "best_metric": best, "best_metric_epoch": 0}
        logger.info(f"Starting model (published): val mean Dice {best:.4f} {m0['dice']} -- to beat")

    def validate_and_publish(epoch: int) -> None:
        nonlocal best
        if val_ds is None:
            if cfg.publish in ("best", "last"):
                do_publish(epoch, None)
            return
        m = validate(adapter, val_ds, cfg.val_max_cases, ranks)
        metrics = {"val_mean_dice": m["mean_dice"], **{f"val_dice_{k}": v for k, v in m["dice"].items()}}
        tb.scalar("val_mean_dice", m["mean_dice"], epoch)
        for k, v in m["dice"].items():
            tb.scalar(f"val_dice/{k}", v, epoch)
        improved = m["mean_dice"] > best
        if improved:
            best = m["mean_dice"]
            state["best_metric"], state["best_metric_epoch"] = best, epoch
        state["eval"] = {"metrics": metrics, "key_metric_name": "val_mean_dice", "best_metric": state["best_metric"],
                         "best_metric_epoch": state["best_metric_epoch"]}
        state["history"].append({"epoch": epoch, "iteration": state["iteration"], **metrics,
                                 "elapsed_s": round(time.time() - t_start, 1)})
        logger.info(f"Epoch {epoch} validation: mean Dice {m['mean_dice']:.4f} "
                    + " ".join(f"{k}={v:.4f}" for k, v in m["dice"].items())
                    + f" ({m['cases']} cases, {m['seconds']}s){' * best' if improved else ''}")
        if improved or cfg.publish == "last":
            do_publish(epoch, m)

    bar = None
    if progress and ranks.is_main:
        from tqdm import tqdm

        bar = tqdm(total=planned_iters, desc="train", unit="it", dynamic_ncols=True)

    adapter.model.train()
    it = 0
    epoch = 0
    last_log = time.time()
    t_iter0 = None
    iters_timed = 0
    loss_window: list[float] = []
    stop_reason = "max_epochs"
    validated_at = -1
    try:
        for epoch in range(1, cfg.max_epochs + 1):
            state["epoch"] = epoch
            epoch_losses = []
            for batch in loader:
                if cfg.max_iterations and it >= cfg.max_iterations:
                    stop_reason = "max_iterations"
                    raise StopTraining
                if budget_s and any_rank(time.time() - t_start >= budget_s, ranks):  # all ranks stop together
                    stop_reason = "time_budget"
                    raise StopTraining
                lr = schedule.step(progress_fraction(it))
                image = batch["image"].to(device, non_blocking=True)
                label = batch["label"].to(device, non_blocking=True)
                ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                with ctx:
                    loss, info = ddp(image, label) if ddp is not None else adapter.training_loss(image, label)
                optimizer.zero_grad(set_to_none=True)
                step_loss = mean_over_ranks(loss, ranks)  # the global batch's loss (this loss for one process)
                if not torch.isfinite(step_loss):
                    logger.warning(f"non-finite loss at iteration {it}; step skipped")
                    if ddp is not None:  # every rank skips; DDP's gradient reduction must still complete
                        (loss * 0.0).backward()
                        optimizer.zero_grad(set_to_none=True)
                    continue
                scaler.scale(loss).backward()
                if cfg.grad_clip and cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                it += 1
                state["iteration"] = it
                lv = float(step_loss)
                epoch_losses.append(lv)
                loss_window.append(lv)
                tb.scalar("train_loss", lv, it)
                tb.scalar("lr", lr, it)
                if t_iter0 is None:  # first iteration includes warm-up costs: rate from the second on
                    t_iter0 = time.time()
                else:
                    iters_timed += 1
                rate = iters_timed / (time.time() - t_iter0) if iters_timed else None
                remaining = planned_iters - it
                eta = remaining / rate if rate else None
                if budget_s:
                    left = budget_s - (time.time() - t_start)
                    eta = min(eta, left) if eta is not None else left
                state["iterations_per_s"] = round(rate, 3) if rate else None
                state["eta_s"] = round(eta, 1) if eta is not None else None
                state["eta"] = _fmt_td(eta)
                state["lr"] = lr
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{lv:.3f}", lr=f"{lr:.1e}")
                if time.time() - last_log >= cfg.log_interval_s:
                    last_log = time.time()
                    total = planned_iters
                    if budget_s and rate:  # what the budget allows at the current rate
                        total = min(planned_iters, it + int(rate * max(0.0, budget_s - (time.time() - t_start))))
                    state["expected_iterations"] = total
                    logger.info(f"Epoch {epoch}/{cfg.max_epochs} iter {it}/{total} "
                                f"loss {np.mean(loss_window):.4f} lr {lr:.2e} | "
                                f"{rate or 0:.2f} it/s | ETA {_fmt_td(eta)}"
                                + (f" | world_size {ranks.world_size}" if ranks.distributed else ""))
                    loss_window = []
                    state["train"] = {"metrics": {"train_loss": float(np.mean(epoch_losses))},
                                      "key_metric_name": "train_loss"}
                    write_stats()
            mean_loss = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
            state["train"] = {"metrics": {"train_loss": mean_loss}, "key_metric_name": "train_loss"}
            tb.scalar("train_epoch_loss", mean_loss, epoch)
            rate = state.get("iterations_per_s")
            logger.info(f"Epoch {epoch}/{cfg.max_epochs} done: loss {mean_loss:.4f}, {it} iterations, "
                        f"{rate or 0:.2f} it/s, elapsed {_fmt_td(time.time() - t_start)}, ETA {state.get('eta', '?')}")
            if epoch % max(1, cfg.val_interval) == 0 or epoch == cfg.max_epochs:
                validate_and_publish(epoch)
                validated_at = it
            write_stats()
            if on_epoch:
                on_epoch(dict(state))
    except StopTraining:
        logger.info(f"Stopping: {stop_reason.replace('_', ' ')} reached after {it} iterations (epoch {epoch})")
    finally:
        if bar is not None:
            bar.close()
    if validated_at != it and it > 0:
        validate_and_publish(epoch)
    state["status"] = "DONE"
    state["stop_reason"] = stop_reason
    state["eta_s"] = 0
    state["eta"] = _fmt_td(0)
    write_stats(final=True)
    tb.close()
    logger.info(f"Training finished ({stop_reason}): {it} iterations in {_fmt_td(time.time() - t_start)}; "
                f"best val mean Dice {state['best_metric']} at epoch {state['best_metric_epoch']}; "
                f"published: {state['published'] or 'nothing new'}")
    return state
