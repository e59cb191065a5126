"""Handlers of the training engine (ignite events of MONAI's ``SupervisedTrainer``), one concept each.

- :class:`StopConditions`: ends the run cleanly (``engine.terminate()``) at ``max_iterations`` or the wall-clock budget;
- :class:`ProgressReporter`: loss window, iterations/s, ETA, log lines, the optional tqdm bar, TensorBoard scalars;
- :class:`ValidationHandler`: the evaluator every ``val_interval`` epochs (and once at the end), best metric, publish;
- :class:`ModelPublisher`: the best model written atomically (``save`` = temp file + rename), earlier weights kept;
- :class:`StatsWriter`: ``train_stats.json`` after every epoch and at the end; :class:`EpochCallback`.

Distributed, every rank runs every handler (validation and the stop decision need all ranks) but only rank 0
writes: other ranks get no stats path, no TensorBoard folder, no publish path, and log warnings only.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ignite.engine import Engine, Events

from .adapters import SegmentationAdapter
from .config import TrainConfig
from .record import RunClock, RunRecord, fmt_td

logger = logging.getLogger("lib.training")


class TensorBoard:
    """Scalars to TensorBoard event files (nothing when ``log_dir`` is None or tensorboard is missing)."""

    def __init__(self, log_dir: str | Path | None):
        self.writer = None
        if log_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(log_dir))
            except Exception as exc:  # tensorboard missing: keep training
                logger.warning(f"TensorBoard events disabled: {exc}")

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        if self.writer is not None and value is not None and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class StopConditions:
    """Before each step (batch fetched): terminate at ``max_iterations`` steps or when the budget is spent."""

    def __init__(self, cfg: TrainConfig, clock: RunClock, record: RunRecord):
        self.max_iterations = int(cfg.max_iterations or 0)
        self.clock = clock
        self.record = record
        record["stop_reason"] = "max_epochs"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        reason = None
        if self.max_iterations and engine.state.iteration >= self.max_iterations:
            reason = "max_iterations"
        elif self.clock.over_budget():
            reason = "time_budget"
        from ignite import distributed as idist

        if idist.get_world_size() > 1:  # every rank stops at the same step: rank 0's clock decides
            reason = idist.broadcast(reason or "", src=0, safe_mode=True) or None
        if reason:
            self.record["stop_reason"] = reason
            logger.info(f"Stopping: {reason.replace('_', ' ')} reached after {engine.state.iteration} iterations "
                        f"(epoch {engine.state.epoch})")
            engine.terminate()


class ProgressReporter:
    """Per step: loss, lr, rate and ETA into the record and TensorBoard; a log line every ``log_interval_s``."""

    def __init__(self, cfg: TrainConfig, clock: RunClock, record: RunRecord, tb: TensorBoard, bar: bool = False):
        self.cfg, self.clock, self.record, self.tb = cfg, clock, record, tb
        self.bar: Any = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=clock.planned, desc="train", unit="it", dynamic_ncols=True)
        self.last_log = time.time()
        self.t_first: float | None = None  # end of the first step (which includes warm-up costs)
        self.timed = 0
        self.window: list[float] = []
        self.epoch_losses: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def epoch_started(self, engine: Engine) -> None:
        self.record["epoch"] = engine.state.epoch
        self.epoch_losses = []

    def _rate_and_eta(self, it: int) -> tuple[float | None, float | None]:
        now = time.time()
        if self.t_first is None:
            self.t_first = now
        else:
            self.timed += 1
        rate = self.timed / (now - self.t_first) if self.timed else None
        eta = (self.clock.planned - it) / rate if rate else None
        left = self.clock.left()
        if left is not None:
            eta = min(eta, left) if eta is not None else left
        return rate, eta

    def iteration_completed(self, engine: Engine) -> None:
        out, it, epoch = engine.state.output, engine.state.iteration, engine.state.epoch
        loss, lr = out["loss"], out["lr"]
        if not math.isfinite(loss):
            return  # skipped step
        self.record["iteration"] = it
        self.epoch_losses.append(loss)
        self.window.append(loss)
        self.tb.scalar("train_loss", loss, it)
        self.tb.scalar("lr", lr, it)
        rate, eta = self._rate_and_eta(it)
        self.record["iterations_per_s"] = round(rate, 3) if rate else None
        self.record["eta_s"] = round(eta, 1) if eta is not None else None
        self.record["eta"] = fmt_td(eta)
        self.record["lr"] = lr
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", lr=f"{lr:.1e}")
        if time.time() - self.last_log >= self.cfg.log_interval_s:
            self.last_log = time.time()
            total = self.clock.planned
            left = self.clock.left()
            if left is not None and rate:  # what the budget allows at the current rate
                total = min(self.clock.planned, it + int(rate * max(0.0, left)))
            self.record["expected_iterations"] = total
            logger.info(f"Epoch {epoch}/{self.cfg.max_epochs} iter {it}/{total} loss {np.mean(self.window):.4f} "
                        f"lr {lr:.2e} | {rate or 0:.2f} it/s | ETA {fmt_td(eta)}")
            self.window = []
            self.record["train"] = {"metrics": {"train_loss": float(np.mean(self.epoch_losses))},
                                    "key_metric_name": "train_loss"}
            self.record.write()

    def epoch_completed(self, engine: Engine) -> None:
        mean_loss = float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan")
        self.record["train"] = {"metrics": {"train_loss": mean_loss}, "key_metric_name": "train_loss"}
        self.tb.scalar("train_epoch_loss", mean_loss, engine.state.epoch)
        rate = self.record.get("iterations_per_s")
        logger.info(f"Epoch {engine.state.epoch}/{self.cfg.max_epochs} done: loss {mean_loss:.4f}, "
                    f"{engine.state.iteration} iterations, {rate or 0:.2f} it/s, "
                    f"elapsed {fmt_td(self.clock.elapsed())}, ETA {self.record.get('eta', '?')}")

    def completed(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()


class ModelPublisher:
    """Publishes the adapter's weights to ``path`` (atomic ``save``); the first publish of a run archives the
    weights it replaces (``lib/weights_history.py``). ``path`` None: nothing is written."""

    def __init__(self, adapter: SegmentationAdapter, path: Path | None, cfg: TrainConfig, record: RunRecord,
                 checkpoint_extra: dict | None = None):
        self.adapter, self.path, self.cfg, self.record = adapter, path, cfg, record
        self.extra = dict(checkpoint_extra or {})

    def publish(self, epoch: int, metrics: dict | None, validated: bool = True) -> None:
        if self.path is None:
            return
        if not validated:
            if not self.cfg.publish_unvalidated:
                logger.warning("Not publishing: no validation study and publish_unvalidated is false")
                return
            self.record["published_without_validation"] = True
            logger.warning(f"Publishing WITHOUT validation (no held-out labelled study): epoch {epoch}; the weights "
                           "served before this run are kept as a version")
        if self.record["published"] is None:  # the first publish of this run keeps what it replaces
            from lib.weights_history import WeightsHistory

            kept = WeightsHistory(self.path, keep=self.cfg.keep_versions).archive_current(
                f"replaced by training run {self.record['run_id']}")
            self.record["archived_version"] = kept["id"] if kept else None
        now = datetime.datetime.now().isoformat(timespec="seconds")
        extra = dict(self.extra)
        extra["training"] = {"run_id": self.record["run_id"], "epoch": epoch, "iteration": self.record["iteration"],
                             "val": metrics, "config": self.cfg.to_dict(), "time": now}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.adapter.save(self.path, extra=extra)
        self.record["published"] = datetime.datetime.now().isoformat(timespec="seconds")
        self.record["published_epoch"] = epoch
        logger.info(f"Published model (epoch {epoch}"
                    f"{', val mean Dice %.4f' % metrics['mean_dice'] if metrics else ''}) -> {self.path}")


class ValidationHandler:
    """Validation every ``val_interval`` epochs (and at the last one; once more at the end when steps ran since),
    the best metric in the record, and publishing on improvement (``publish="best"``) or always (``"last"``).

    ``validate``: ``() -> {"mean_dice", "dice", "cases", "seconds"}``, or None when there is no validation data.
    """

    def __init__(self, cfg: TrainConfig, record: RunRecord, publisher: ModelPublisher, tb: TensorBoard,
                 validate: Callable[[], dict] | None):
        self.cfg, self.record, self.publisher, self.tb, self.validate = cfg, record, publisher, tb, validate
        self.best = -math.inf
        self.validated_at = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def set_bar(self, metrics: dict) -> None:
        """The starting model's validation (fine-tuning a published model): the Dice to beat to publish."""
        self.best = metrics["mean_dice"]
        self.record["best_metric"], self.record["best_metric_epoch"] = self.best, 0
        self.record["eval"] = {"metrics": _metrics(metrics), "key_metric_name": "val_mean_dice",
                               "best_metric": self.best, "best_metric_epoch": 0}
        logger.info(f"Starting model (published): val mean Dice {self.best:.4f} {metrics['dice']} -- to beat")

    def epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % max(1, self.cfg.val_interval) == 0 or epoch == self.cfg.max_epochs:
            self.run(epoch, engine.state.iteration)

    def completed(self, engine: Engine) -> None:
        it = int(self.record["iteration"])
        if self.validated_at != it and it > 0:
            self.run(engine.state.epoch, it)

    def run(self, epoch: int, iteration: int) -> None:
        self.validated_at = int(self.record["iteration"])
        if self.validate is None:
            if self.cfg.publish in ("best", "last"):
                self.publisher.publish(epoch, None, validated=False)
            return
        m = self.validate()
        metrics = _metrics(m)
        self.tb.scalar("val_mean_dice", m["mean_dice"], epoch)
        for k, v in m["dice"].items():
            self.tb.scalar(f"val_dice/{k}", v, epoch)
        improved = m["mean_dice"] > self.best
        if improved:
            self.best = m["mean_dice"]
            self.record["best_metric"], self.record["best_metric_epoch"] = self.best, epoch
        self.record["eval"] = {"metrics": metrics, "key_metric_name": "val_mean_dice",
                               "best_metric": self.record["best_metric"],
                               "best_metric_epoch": self.record["best_metric_epoch"]}
        self.record["history"].append({"epoch": epoch, "iteration": self.record["iteration"], **metrics,
                                       "elapsed_s": round(self.record.clock.elapsed(), 1)})
        logger.info(f"Epoch {epoch} validation: mean Dice {m['mean_dice']:.4f} "
                    + " ".join(f"{k}={v:.4f}" for k, v in m["dice"].items())
                    + f" ({m['cases']} cases, {m['seconds']}s){' * best' if improved else ''}")
        if improved or self.cfg.publish == "last":
            self.publisher.publish(epoch, m)


def _metrics(m: dict) -> dict:
    return {"val_mean_dice": m["mean_dice"], **{f"val_dice_{k}": v for k, v in m["dice"].items()}}


class StatsWriter:
    """``train_stats.json`` after every epoch (after validation) and, final, at the end (status DONE)."""

    def __init__(self, record: RunRecord, tb: TensorBoard):
        self.record, self.tb = record, tb

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.record.write())
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def completed(self, engine: Engine) -> None:
        self.record["status"] = "DONE"
        self.record["eta_s"] = 0
        self.record["eta"] = fmt_td(0)
        self.record.write(final=True)
        self.tb.close()
        r = self.record
        logger.info(f"Training finished ({r['stop_reason']}): {r['iteration']} iterations in "
                    f"{fmt_td(r.clock.elapsed())}; best val mean Dice {r['best_metric']} at epoch "
                    f"{r['best_metric_epoch']}; published: {r['published'] or 'nothing new'}")


class EpochCallback:
    """Calls ``fn(copy of the record)`` after every completed epoch (after validation and the stats file)."""

    def __init__(self, fn: Callable[[dict], Any], record: RunRecord):
        self.fn, self.record = fn, record

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.fn(dict(self.record.state)))
