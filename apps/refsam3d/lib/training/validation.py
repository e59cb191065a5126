"""Validation: Dice per label on whole volumes, as a MONAI ``SupervisedEvaluator``.

Each iteration segments one whole volume with ``adapter.segment`` (sliding window over the validation
window, the same path the evaluation and the server take) and scores it with ``lib.evaluation``'s Dice;
:class:`PerLabelDice` (an ignite metric) averages per label over the cases -- added up across ranks
when the evaluator runs in several processes.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .adapters import SegmentationAdapter
from .distributed import Ranks, all_reduce_sums
from .prompts import label_map_to_binary


def _one_item(batch: list[dict]) -> dict:
    return batch[0]


def validation_loader(dataset: Dataset, max_cases: int = 0, sampler: Sampler | None = None) -> DataLoader:
    """One whole volume per iteration (no collation: the item as the dataset gives it)."""
    if max_cases and max_cases < len(dataset):  # type: ignore[arg-type]
        dataset = Subset(dataset, range(max_cases))
    return DataLoader(dataset, batch_size=1, shuffle=False, sampler=sampler, num_workers=0, collate_fn=_one_item)


class PerLabelDice(Metric):
    """Mean Dice per label over the cases -> ``{"mean_dice", "dice": {label: mean}, "cases": n}``.

    ``ranks`` (distributed, each rank holding its share of the cases): per-label sums and counts are added up over
    the ranks, so every rank gets the Dice of all cases.
    """

    def __init__(self, names: Sequence[str], ranks: Ranks | None = None):
        self.names = list(names)
        self.ranks = ranks if ranks is not None and ranks.distributed else None
        super().__init__(output_transform=lambda out: out["dice"])

    def reset(self) -> None:
        self._rows: list[list[float]] = []

    def update(self, dice: Sequence[float]) -> None:
        self._rows.append([float(d) for d in dice])

    def compute(self) -> dict[str, Any]:
        rows = torch.tensor(self._rows, dtype=torch.float64).reshape(-1, len(self.names))  # [cases, K]
        if self.ranks is not None:
            return self._reduced(rows)
        per_label = {name: float(np.mean(rows[:, k].tolist())) for k, name in enumerate(self.names) if len(rows)}
        mean = float(np.mean(list(per_label.values()))) if per_label else 0.0
        return {"mean_dice": mean, "dice": per_label, "cases": int(rows.shape[0])}

    def _reduced(self, rows: torch.Tensor) -> dict[str, Any]:
        sums = {name: float(rows[:, k].sum()) for k, name in enumerate(self.names)}
        total = all_reduce_sums({**sums, " cases": float(rows.shape[0])}, self.ranks)
        cases = int(total.pop(" cases"))
        per_label = {name: total[name] / cases for name in self.names} if cases else {}
        mean = float(np.mean(list(per_label.values()))) if per_label else 0.0
        return {"mean_dice": mean, "dice": per_label, "cases": cases}


class SegmentAndScore:
    """The evaluator's ``iteration_update``: ``{"image" [1,*spatial], "label" [1,*spatial]} -> {"dice": [K]}``."""

    def __init__(self, adapter: SegmentationAdapter):
        self.adapter = adapter

    def __call__(self, engine: Engine, item: dict) -> dict[str, list[float]]:
        from lib.evaluation import dice_per_label

        image = torch.as_tensor(item["image"]).float()[None]  # [1, 1, D, H, W]
        gt = label_map_to_binary(torch.as_tensor(item["label"]), self.adapter.entries)  # [K, D, H, W]
        with torch.no_grad():
            pred = self.adapter.segment(image).to("cpu")  # [K, D, H, W] bool
        return {"dice": dice_per_label(pred, gt)}


def make_evaluator(adapter: SegmentationAdapter, loader: DataLoader,
                   ranks: Ranks | None = None) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` whose ``state.metrics["val"]`` is :class:`PerLabelDice`'s result (reduced over
    ``ranks`` when each holds a share of the cases)."""
    evaluator = SupervisedEvaluator(device=adapter.device, val_data_loader=loader, network=adapter.model,
                                    iteration_update=SegmentAndScore(adapter), decollate=False)
    evaluator.logger.setLevel("WARNING")  # ignite's per-epoch lines; our handlers log the result
    PerLabelDice([e.name for e in adapter.entries], ranks).attach(evaluator, "val")
    return evaluator


def run_validation(adapter: SegmentationAdapter, evaluator: SupervisedEvaluator) -> dict:
    """Run ``evaluator`` once (model in eval mode, back to train mode) -> ``{"mean_dice", "dice", "cases", "seconds"}``."""
    t0 = time.time()
    adapter.model.eval()
    try:
        evaluator.run()
    finally:
        adapter.model.train()
    return {**evaluator.state.metrics["val"], "seconds": round(time.time() - t0, 2)}


def validate(adapter: SegmentationAdapter, dataset: Dataset, max_cases: int = 0) -> dict:
    """Dice per label on whole volumes -> ``{"mean_dice", "dice": {label: mean}, "cases": n, "seconds"}``."""
    return run_validation(adapter, make_evaluator(adapter, validation_loader(dataset, max_cases)))
