"""The training run shared by ``POST /train/refsam3d``, ``scripts/train.py`` and the benchmark, on MONAI's engines.

No MONAI Label import here: the server's train task and the command line call :func:`run_training`.

- a ``monai.engines.SupervisedTrainer`` whose ``iteration_update`` is :class:`~.step.TrainStep` (AdamW on the
  adapter's trainable parameters, linear warm-up then decay on ``max(iterations done / planned, minutes used /
  budget)``, mixed precision, gradient clipping) and whose ``network`` is :class:`~.step.ForwardLoss`;
- validation: a ``SupervisedEvaluator`` (``validation.py``) every ``val_interval`` epochs;
- handlers (``handlers.py``): stop at the budget, progress + TensorBoard, validation + atomic publishing of the
  best model, ``train_stats.json`` (the file MONAI Label's ``/train/`` reports).

Pieces are built by :class:`TrainRecipe` -- the functions ``RefSAM3DTrain``'s ``network``, ``optimizer``,
``loss_function``, transforms and ``val_inferer`` call too.

Distributed (torchrun / the train task's ``multi_gpu``; ``distributed.py``): ``recipe.network(adapter)`` in
``DistributedDataParallel``; each rank caches and trains on its share of the cases (``shard``) and validates its
share of the validation cases (``PerLabelDice`` adds up the per-label sums and counts of all ranks); the ranks
share one clock (lr schedule, budget) and ``StopConditions`` follows rank 0's decision; ranks > 0 get no stats
file, no events and no publish path.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.engines import SupervisedTrainer

from .adapters import SegmentationAdapter
from .config import TrainConfig
from .data import cached_dataset, train_loader, train_transforms, val_transforms
from .distributed import Ranks, current, max_over_ranks, rank_device, rank_seed, shard, wrap_ddp
from .handlers import (EpochCallback, ModelPublisher, ProgressReporter, StatsWriter, StopConditions, TensorBoard,
                       ValidationHandler)
from .record import RunClock, RunRecord
from .step import ForwardLoss, LinearSchedule, TrainStep, autocast_dtype
from .validation import make_evaluator, run_validation, validate, validation_loader

logger = logging.getLogger("lib.training")

__all__ = ["LinearSchedule", "TrainData", "TrainOutput", "TrainRecipe", "run_training", "validate"]


@dataclass
class TrainData:
    """Training and validation cases (``[{"image", "label", "id"}]``) and how to pre-process them."""

    train: Sequence[dict]
    val: Sequence[dict]
    modality: str
    target_spacing: Sequence[float]
    crop_size: Sequence[int]
    ct_window: Sequence[float] | None = None


@dataclass
class TrainOutput:
    """Where a run writes: the published model, ``train_stats.json``, TensorBoard events.

    ``fine_tunes_published``: the model was loaded from ``publish_path`` -- with ``cfg.validate_start`` its
    validation Dice is measured first and must be beaten to publish. ``progress``: a tqdm bar.
    """

    publish_path: str | os.PathLike | None
    stats_path: str | os.PathLike | None = None
    events_dir: str | os.PathLike | None = None
    checkpoint_extra: dict = field(default_factory=dict)
    run_id: str | None = None
    fine_tunes_published: bool = False
    progress: bool = False
    run_info: dict = field(default_factory=dict)  # extra stats keys: how the run was started (e.g. multi_gpu)


class TrainRecipe:
    """The pieces of a run, built one way for the engine and for ``RefSAM3DTrain``'s methods."""

    def __init__(self, cfg: TrainConfig, data: TrainData):
        self.cfg, self.data = cfg, data

    def train_transforms(self):
        d = self.data
        return train_transforms(d.modality, d.target_spacing, tuple(int(c) for c in d.crop_size), self.cfg,
                                d.ct_window)

    def val_transforms(self):
        return val_transforms(self.data.modality, self.data.target_spacing, ct_window=self.data.ct_window)

    def optimizer(self, adapter: SegmentationAdapter) -> torch.optim.Optimizer:
        if not adapter.parameters_to_optimise():
            raise ValueError("the model has no trainable parameters")
        return adapter.make_optimizer(self.cfg)

    def network(self, adapter: SegmentationAdapter) -> ForwardLoss:
        return ForwardLoss(adapter)

    def train_loader(self, dataset, ranks: Ranks = Ranks(), sampler=None):
        """The shuffled training loader (``sampler``: e.g. a ``DistributedSampler``); distributed: of this rank's
        share, its augmentation seeded per rank (``rank_seed``)."""
        return train_loader(dataset, self.cfg.batch_size, self.cfg.num_workers, rank_seed(self.cfg.seed, ranks),
                            sampler=sampler)


def _runtime(cfg: TrainConfig, adapter: SegmentationAdapter, ranks: Ranks) -> torch.dtype | None:
    """Threads, seeds, device (distributed: this rank's); the autocast dtype."""
    if cfg.threads and cfg.threads > 0:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    device = rank_device(cfg.device, ranks)
    adapter.to(device)
    if ranks.distributed and hasattr(adapter, "rng"):  # each rank draws its own prompts and clicks
        adapter.rng.seed(rank_seed(cfg.seed, ranks))
    amp_dtype = autocast_dtype(device, cfg.amp, cfg.amp_cpu)
    if amp_dtype is not None and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return amp_dtype


def build_trainer(adapter: SegmentationAdapter, recipe: TrainRecipe, loader, clock: RunClock,
                  amp_dtype: torch.dtype | None, handlers: Sequence[Any], ranks: Ranks = Ranks()) -> SupervisedTrainer:
    """The ``SupervisedTrainer`` of a run: :class:`TrainStep` as its iteration, ``handlers`` attached in order.

    Distributed (``ranks``): the network is the :class:`ForwardLoss` wrapped in DDP."""
    cfg = recipe.cfg
    optimizer = recipe.optimizer(adapter)
    schedule = LinearSchedule(optimizer, float(optimizer.param_groups[0]["lr"]), cfg.warmup_fraction,
                              cfg.min_lr_fraction)
    step = TrainStep(schedule, clock.progress, adapter.parameters_to_optimise(), amp_dtype, cfg.grad_clip, ranks)
    trainer = SupervisedTrainer(
        device=adapter.device, max_epochs=cfg.max_epochs, train_data_loader=loader,
        network=wrap_ddp(recipe.network(adapter), ranks), optimizer=optimizer,
        loss_function=getattr(adapter, "loss_fn", None), iteration_update=step, train_handlers=list(handlers),
        decollate=False, amp=False,
    )
    trainer.logger.setLevel("WARNING")  # ignite's per-epoch lines; ProgressReporter logs ours
    return trainer


def run_training(adapter: SegmentationAdapter, cfg: TrainConfig, data: TrainData, output: TrainOutput,
                 on_epoch: Callable[[dict], Any] | None = None) -> dict:
    """Train ``adapter`` and publish its best state to ``output.publish_path``; returns the final stats."""
    t_start = time.time()
    run_id = output.run_id or datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    ranks = current()  # torchrun / multi_gpu: this rank (lib/training/distributed.py); else world size 1
    amp_dtype = _runtime(cfg, adapter, ranks)
    if not data.train:
        raise ValueError("no training cases (need images with final labels)")
    recipe = TrainRecipe(cfg, data)
    logger.info(f"Training run {run_id}: {len(data.train)} training / {len(data.val)} validation cases; "
                f"crop {tuple(int(c) for c in data.crop_size)}; labels {[e.name for e in adapter.entries]}; "
                f"device {adapter.device}; threads {torch.get_num_threads()}; world_size {ranks.world_size}; "
                f"config {cfg}")
    t_cache = time.time()
    # each rank caches and trains on its share; validation cases are split too (all on every rank when fewer)
    val_list = list(data.val)[: cfg.val_max_cases or None]
    val_sharded = ranks.distributed and len(val_list) >= ranks.world_size
    train_ds = cached_dataset(shard(data.train, ranks, even=True, seed=cfg.seed), recipe.train_transforms(),
                              cfg.cache_rate)
    val_ds = cached_dataset(shard(val_list, ranks, even=False) if val_sharded else val_list,
                            recipe.val_transforms(), cfg.cache_rate) if data.val else None
    loader = recipe.train_loader(train_ds, ranks)
    logger.info(f"Cached pre-processed volumes in {time.time() - t_cache:.1f}s")

    iters_per_epoch = max(1, len(loader))
    planned = cfg.max_epochs * iters_per_epoch
    if cfg.max_iterations:
        planned = min(planned, cfg.max_iterations)
    # one clock for all ranks (the latest): the same lr and the same budget decision everywhere
    clock = RunClock(planned, cfg.max_minutes, start=t_start,
                     shared=(lambda t: max_over_ranks(t, ranks)) if ranks.distributed else None)
    # only rank 0 writes: the stats file, TensorBoard, the published model (other ranks log warnings only)
    main = ranks.is_main
    publish = Path(output.publish_path) if output.publish_path else None
    record = RunRecord.start(output.stats_path if main else None, clock, run_id, cfg, iters_per_epoch,
                             len(data.train), data.val, publish, adapter.describe())
    record.state.update(world_size=ranks.world_size, global_batch_size=cfg.batch_size * ranks.world_size,
                        **output.run_info)
    record.write()  # at once: viewers see the new run (epoch 0 of total_epochs), not the last run's stats
    tb = TensorBoard(output.events_dir if main else None)
    evaluator = make_evaluator(adapter, validation_loader(val_ds, cfg.val_max_cases),
                               ranks if val_sharded else None) if val_ds is not None else None
    publisher = ModelPublisher(adapter, publish if main else None, cfg, record, output.checkpoint_extra)
    validation = ValidationHandler(cfg, record, publisher, tb,
                                   (lambda: run_validation(adapter, evaluator)) if evaluator else None)
    if output.fine_tunes_published and evaluator is not None and cfg.validate_start and cfg.publish == "best":
        validation.set_bar(run_validation(adapter, evaluator))
    handlers: list[Any] = [StopConditions(cfg, clock, record),
                           ProgressReporter(cfg, clock, record, tb, bar=output.progress and main), validation,
                           StatsWriter(record, tb)]
    if on_epoch:
        handlers.append(EpochCallback(on_epoch, record))
    trainer = build_trainer(adapter, recipe, loader, clock, amp_dtype, handlers, ranks)
    adapter.model.train()
    trainer.run()
    return record.state
