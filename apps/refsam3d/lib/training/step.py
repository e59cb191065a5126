"""One training step: the trainer's ``iteration_update`` (MONAI ``SupervisedTrainer``).

- :class:`ForwardLoss`: the model's forward and the loss as ONE ``nn.Module`` forward, so that
  ``torch.nn.parallel.DistributedDataParallel`` can wrap it (the trainer's ``network``);
- :class:`LinearSchedule`: linear warm-up then linear decay on the run's progress (iterations or wall clock);
- :class:`TrainStep`: lr from the schedule, autocast (CUDA fp16/bf16, ``amp_cpu`` bf16), backward with a
  gradient scaler (fp16 only), gradient clipping, optimiser step.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Sequence

import torch
from ignite.engine import Engine

from .adapters import SegmentationAdapter
from .distributed import Ranks, mean_over_ranks

logger = logging.getLogger("lib.training")


class ForwardLoss(torch.nn.Module):
    """``(image [B,1,*crop], label [B,1,*crop]) -> (loss, info)`` through ``adapter.training_loss``.

    The adapter's network is registered as the submodule ``model`` (its parameters are this module's).
    """

    def __init__(self, adapter: SegmentationAdapter):
        super().__init__()
        self.model = adapter.model
        self.adapter = adapter

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.adapter.training_loss(image, label)


class LinearSchedule:
    """lr = base * warm-up ramp * (1 - progress), progress in [0, 1] (iterations and/or wall clock)."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup_fraction: float,
                 min_fraction: float = 0.0):
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


def autocast_dtype(device: torch.device, amp: bool, amp_cpu: bool) -> torch.dtype | None:
    """bf16 (or fp16 where bf16 is unsupported) on CUDA with ``amp``; bf16 on the CPU with ``amp_cpu``."""
    if amp and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp_cpu and device.type == "cpu":
        return torch.bfloat16  # CPUs with AMX/AVX512-BF16 run bf16 matmuls much faster
    return None


class TrainStep:
    """``iteration_update(engine, batch) -> {"loss", "lr", "info"}`` of the ``SupervisedTrainer``.

    Uses ``engine.network`` (a :class:`ForwardLoss`, possibly wrapped by DDP) and ``engine.optimizer``;
    ``progress(iterations_done)`` drives the schedule. A non-finite loss skips the step (``loss`` = NaN).
    Distributed (``ranks``): ``loss`` is the mean over the ranks (the global batch's), and a non-finite loss on
    any rank skips the step on all of them.
    """

    def __init__(self, schedule: LinearSchedule, progress: Callable[[int], float], params: Sequence[torch.nn.Parameter],
                 amp_dtype: torch.dtype | None = None, grad_clip: float = 0.0, ranks: Ranks = Ranks()):
        self.schedule = schedule
        self.progress = progress
        self.params = list(params)
        self.amp_dtype = amp_dtype
        self.grad_clip = float(grad_clip or 0.0)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.ranks = ranks

    def __call__(self, engine: Engine, batch: dict) -> dict[str, Any]:
        lr = self.schedule.step(self.progress(engine.state.iteration - 1))  # iterations done before this one
        device = engine.state.device
        image = batch["image"].to(device, non_blocking=True)  # [B, 1, *crop]
        label = batch["label"].to(device, non_blocking=True)  # [B, 1, *crop] label-set indices
        ctx = torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with ctx:
            loss, info = engine.network(image, label)
        optimizer = engine.optimizer
        optimizer.zero_grad(set_to_none=True)
        step_loss = mean_over_ranks(loss, self.ranks)  # this loss for one process
        if not torch.isfinite(step_loss):
            logger.warning(f"non-finite loss at iteration {engine.state.iteration - 1}; step skipped")
            if self.ranks.distributed:  # every rank skips; DDP's gradient reduction must still complete
                (loss * 0.0).backward()
                optimizer.zero_grad(set_to_none=True)
            return {"loss": float("nan"), "lr": lr, "info": info}
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        return {"loss": float(step_loss), "lr": lr, "info": info}
