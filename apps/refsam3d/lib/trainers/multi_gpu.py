"""The train task's ``multi_gpu`` / ``gpus`` options: one DDP rank per GPU, started as MONAI Label's trainers do.

``BasicTrainTask.__call__`` spawns ``world_size`` processes (``torch.multiprocessing.spawn`` of its
``main_worker``, which calls ``task.train(rank, world_size, request, datalist)``) with ``env://`` rendezvous on
``MASTER_ADDR``/``MASTER_PORT`` (MONAI Label's task runner sets them; :func:`plan` sets them when it did not).
Each rank joins the process group in :func:`join` and the shared engine runs DDP (``lib/training/distributed.py``).

Without at least two CUDA GPUs ``multi_gpu`` falls back to one process visibly: a warning in the log and the
reason in ``train_stats.json`` (``multi_gpu``), never silently.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable

import torch
from lib.training.config import first, parse_bool
from lib.training.distributed import Ranks, free_port, init_distributed, teardown

logger = logging.getLogger(__name__)


def requested_gpus(gpus: Any) -> list[int] | None:
    """``"all"``/empty -> None (every visible GPU); ``"0,2"`` -> ``[0, 2]``."""
    text = str(first(gpus) if gpus is not None else "all").strip().lower()
    if text in ("", "all"):
        return None
    try:
        return [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise ValueError(f"gpus must be 'all' or comma-separated GPU indices such as '0,1', got {gpus!r}") from None


def unavailable_reason(gpus: Any) -> str | None:
    """Why ``multi_gpu`` cannot run here (None: it can): it needs two or more CUDA GPUs."""
    wanted = requested_gpus(gpus)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return f"multi_gpu needs at least 2 CUDA GPUs; this machine has {count}"
    if wanted is not None:
        missing = [g for g in wanted if g >= count]
        if missing:
            return f"gpus {wanted} asked for GPU(s) {missing}, but this machine has {count} (0..{count - 1})"
        if len(wanted) < 2:
            return f"multi_gpu with gpus {wanted} is one GPU"
    return None


def plan(request: dict, default: Any = False) -> dict:
    """The request with ``multi_gpu`` decided: kept when the GPUs exist, else off with ``multi_gpu_fallback`` set."""
    request = dict(request)
    if not parse_bool(first(request.get("multi_gpu", default))):
        request["multi_gpu"] = False
        return request
    reason = unavailable_reason(request.get("gpus", "all"))
    if reason:
        logger.warning(f"{reason}: training in ONE process instead (multi_gpu ignored)")
        request["multi_gpu"] = False
        request["multi_gpu_fallback"] = f"{reason}: trained in one process"
        return request
    request["multi_gpu"] = True
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # env:// rendezvous of the spawned ranks
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    return request


def join(rank: int, world_size: int, request: dict) -> Ranks:
    """In a spawned rank: join the process group (NCCL on the rank's GPU; gloo for ``device`` cpu)."""
    wanted = requested_gpus(request.get("gpus", "all"))
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)})
    device = str(first(request.get("device")) or "auto")
    return init_distributed(device, cuda_index=wanted[rank] if wanted else rank)


def store_settings(store) -> dict:
    """``ModelStore(**settings)`` rebuilds the task's store in a spawned rank (its lock and model stay behind)."""
    return {"model_dir": str(store.model_dir), "preset": store.preset, "sam_checkpoint": store.sam_checkpoint,
            "text_encoder": store.requested_text_encoder, "use_pretrained_model": store.use_pretrained_model,
            "device": store.device, "sam_url": store.sam_url}


def joins_ranks(train: Callable) -> Callable:
    """Wraps ``BasicTrainTask.train(rank, world_size, request, datalist)``: with ``multi_gpu`` the rank joins the
    process group first (:func:`join`) and leaves it after (a failed rank leaves at once, see ``teardown``)."""

    @functools.wraps(train)
    def wrapper(task, rank: int, world_size: int, request: dict, datalist: list):
        ranks = join(rank, world_size, request) if request.get("multi_gpu") else None
        try:
            result = train(task, rank, world_size, request, datalist)
        except BaseException:
            teardown(failed=True)
            raise
        if ranks is not None:
            teardown()
        return result

    return wrapper


def run_info(request: dict, world_size: int) -> dict:
    """What ``train_stats.json`` records about how the run was started."""
    info: dict[str, Any] = {"multi_gpu": bool(request.get("multi_gpu")) and world_size > 1}
    if request.get("multi_gpu_fallback"):
        info["multi_gpu"] = request["multi_gpu_fallback"]
    return info
