"""A training run's clock (progress for the schedule, the budget, ETA) and its record (``train_stats.json``).

The record is the dict MONAI Label's ``/train/`` and ``/info/`` report (``epoch``, ``total_epochs``,
``best_metric``, ``train``/``eval`` metrics, ...); the handlers of ``lib/training/handlers.py`` fill it in.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import TrainConfig


def fmt_td(seconds: float | None) -> str:
    """Seconds -> ``H:MM:SS`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a hidden temporary file, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class RunClock:
    """Wall clock of a run: ``progress(it) = max(it / planned, elapsed / budget)`` in [0, 1+].

    ``shared``: maps this process's elapsed seconds to the run's (distributed: the latest of all ranks, so every
    rank steps with one learning rate and stops at the budget together); used by ``progress`` and ``over_budget``
    only, which every rank calls in the same order.
    """

    def __init__(self, planned_iterations: int, budget_minutes: float = 0.0, start: float | None = None,
                 shared: Callable[[float], float] | None = None):
        self.start = time.time() if start is None else start
        self.planned = max(1, int(planned_iterations))
        self.budget_s = budget_minutes * 60.0 if budget_minutes and budget_minutes > 0 else None
        self.shared = shared

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float | None:
        """Seconds of budget left (None without a budget)."""
        return None if self.budget_s is None else self.budget_s - self.elapsed()

    def _run_elapsed(self) -> float:
        return self.shared(self.elapsed()) if self.shared else self.elapsed()

    def over_budget(self) -> bool:
        return self.budget_s is not None and self._run_elapsed() >= self.budget_s

    def progress(self, iterations_done: int) -> float:
        p = iterations_done / self.planned
        if self.budget_s:
            p = max(p, self._run_elapsed() / self.budget_s)
        return p


class RunRecord:
    """The run's stats dict, rewritten atomically to ``path`` (when given) by :meth:`write`."""

    def __init__(self, path: str | os.PathLike | None, clock: RunClock, **fields: Any):
        self.path = Path(path) if path else None
        self.clock = clock
        self.state: dict[str, Any] = dict(fields)

    @classmethod
    def start(cls, path, clock: RunClock, run_id: str, cfg: TrainConfig, iterations_per_epoch: int,
              train_cases: int, val_datalist: Sequence[dict], publish_path: Path | None, model: dict) -> "RunRecord":
        val_ids = [d.get("id") or Path(str(d.get("image"))).name for d in val_datalist]
        return cls(
            path, clock, run_id=run_id, status="RUNNING", start_ts=int(clock.start), epoch=0,
            max_epochs=cfg.max_epochs, iteration=0, planned_iterations=clock.planned,
            iterations_per_epoch=iterations_per_epoch, budget_minutes=cfg.max_minutes or None,
            best_metric=None, best_metric_epoch=None,
            total_epochs=cfg.max_epochs, total_iterations=clock.planned,  # OHIF: epoch / total_epochs
            published=None, published_epoch=None, publish_path=str(publish_path) if publish_path else None,
            archived_version=None, published_without_validation=False,
            train_cases=train_cases, val_cases=len(val_ids), config=cfg.to_dict(), val_studies=val_ids,
            validation=("Dice on held-out labelled studies (never trained on)" if val_ids
                        else "none: no held-out labelled study (label more studies or set val_split)"),
            model=model, train={}, eval={}, history=[],
        )

    def __getitem__(self, key: str) -> Any:
        return self.state[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.state[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default)

    def write(self, final: bool = False) -> dict:
        elapsed = self.clock.elapsed()
        self.state["elapsed_s"] = round(elapsed, 1)
        if final:
            self.state.pop("current_time", None)
            self.state["total_time"] = fmt_td(elapsed)
        else:
            self.state["current_time"] = fmt_td(elapsed)
        if self.path:
            write_json_atomic(self.path, self.state)
        return self.state
