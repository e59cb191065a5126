"""torch.distributed for training: ranks from torchrun's environment, DDP, each rank's share of the data.

One process (no ``WORLD_SIZE`` > 1 in the environment) is world size 1 and every helper here is a no-op,
so single-process training runs exactly as before. Under ``torchrun --nproc_per_node N scripts/train.py``
(or the train task's ``multi_gpu``, whose ranks MONAI Label's ``BasicTrainTask`` spawns, ``lib/trainers/multi_gpu.py``):

- :func:`init_distributed` joins the process group (``env://``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT``), NCCL on CUDA (one GPU per rank, ``LOCAL_RANK``) and gloo on the CPU;
- :func:`wrap_ddp` wraps the module whose forward is the training loss (``step.ForwardLoss``), so DDP sees
  every parameter the step uses (the click rounds call the model's parts directly) and averages gradients;
- :func:`shard` gives each rank its part of a data list (MONAI's ``partition_dataset``, as MONAI Label's
  trainers do, so each rank caches only its share); validation sums are added up with :func:`all_reduce_sums`;
- only rank 0 (:func:`is_main_process`) logs, writes TensorBoard and ``train_stats.json`` and publishes.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

RANK_SEED_STRIDE = 1_000_003  # rank r draws augmentations from seed + r * stride (rank 0: the seed itself)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``world_size`` 1 = plain single-process training."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_ranks(environ: Mapping[str, str] | None = None) -> Ranks:
    """The ranks torchrun (or the train task's spawned ranks) put in the environment; world size 1 without them."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    return Ranks(rank=int(env.get("RANK", "0")), local_rank=int(env.get("LOCAL_RANK", env.get("RANK", "0"))),
                 world_size=world)


def current() -> Ranks:
    """The ranks of the joined process group (world size 1 when none was joined)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    world = dist.get_world_size()
    return Ranks(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                 world_size=world, backend=str(dist.get_backend()))


def is_main_process() -> bool:
    return current().is_main


def wants_cuda(device: str | torch.device | None) -> bool:
    name = str(device or "auto").lower()
    return torch.cuda.is_available() and (name in ("auto", "") or name.startswith("cuda"))


def init_distributed(device: str | torch.device | None = "auto", timeout_s: float = 1800.0,
                     cuda_index: int | None = None) -> Ranks:
    """Join the process group the environment describes (NCCL on CUDA, gloo on the CPU); world size 1: nothing.

    ``cuda_index``: this rank's GPU (default ``LOCAL_RANK``).
    """
    ranks = env_ranks()
    if not ranks.distributed:
        return ranks
    if dist.is_initialized():
        return current()
    import datetime

    backend = "nccl" if wants_cuda(device) else "gloo"
    if backend == "nccl":
        gpu = ranks.local_rank if cuda_index is None else int(cuda_index)
        if gpu >= torch.cuda.device_count():
            raise RuntimeError(f"rank {ranks.rank} has no GPU {gpu}: this node has {torch.cuda.device_count()}; "
                               "start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(gpu)  # "cuda" now means this rank's GPU
    dist.init_process_group(backend=backend, init_method="env://", rank=ranks.rank, world_size=ranks.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    if not ranks.is_main:  # only rank 0 logs (warnings and errors still show from every rank)
        logging.getLogger().setLevel(logging.WARNING)
    logger.warning(f"Joined the process group: rank {ranks.rank} of world_size {ranks.world_size} "
                   f"(local rank {ranks.local_rank}), backend {backend}")
    return current()


def teardown(failed: bool = False) -> None:
    """Leave the process group after a barrier (no rank exits while rank 0 still publishes).

    ``failed``: this rank raised; no barrier (the others may wait in a collective that never comes): the process
    exits with the error and torchrun (or ``torch.multiprocessing.spawn``) stops the other ranks.
    """
    if not (dist.is_available() and dist.is_initialized()) or failed:
        return
    dist.barrier()
    dist.destroy_process_group()


def rank_device(device: str | torch.device | None, ranks: Ranks) -> torch.device:
    """The device of this rank: its own GPU under NCCL, else the configured one."""
    from .adapters import resolve_device

    if ranks.distributed and ranks.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return resolve_device(device)


def rank_seed(seed: int, ranks: Ranks) -> int:
    """Augmentation/prompt seed of this rank: ``seed`` on rank 0 (so one process is unchanged), distinct elsewhere."""
    return int(seed) + ranks.rank * RANK_SEED_STRIDE


def shard(datalist: Sequence[Any], ranks: Ranks, even: bool = True, seed: int = 0) -> list:
    """This rank's part of ``datalist``: shuffled by ``seed`` (the same on every rank) and dealt out.

    ``even`` (training): every rank gets the same number of items (a few repeated), so every rank runs the
    same number of steps; with fewer items than ranks every rank gets them all (as MONAI Label does).
    Not ``even`` (validation): each item on exactly one rank, so sums over ranks count every case once (with
    fewer items than ranks some ranks get none: the engine then validates all cases on every rank instead).
    """
    items = list(datalist)
    if not ranks.distributed:
        return items
    from monai.data import partition_dataset

    if even and len(items) < ranks.world_size:
        return items
    return list(partition_dataset(items, num_partitions=ranks.world_size, shuffle=even, seed=seed,
                                  even_divisible=even)[ranks.rank])


def _comm_device(ranks: Ranks) -> torch.device:
    """Where collective tensors live: this rank's GPU under NCCL, else the CPU (gloo)."""
    return torch.device("cuda", torch.cuda.current_device()) if ranks.backend == "nccl" else torch.device("cpu")


def all_reduce_sums(values: Mapping[str, float], ranks: Ranks) -> dict[str, float]:
    """Each key's value summed over the ranks (float64); unchanged for one process."""
    if not ranks.distributed:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device(ranks))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def mean_over_ranks(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of a scalar over the ranks (NaN/inf anywhere gives a non-finite mean everywhere)."""
    if not ranks.distributed:
        return value.detach()
    t = value.detach().float().reshape(1).to(_comm_device(ranks), copy=True)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t[0] / ranks.world_size


def max_over_ranks(value: float, ranks: Ranks) -> float:
    """The largest ``value`` of all ranks, on every rank (e.g. the clock: one learning rate for all)."""
    if not ranks.distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(ranks))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """True on every rank when it is true on at least one (so all ranks stop together)."""
    return max_over_ranks(1.0 if flag else 0.0, ranks) > 0 if ranks.distributed else bool(flag)


def wrap_ddp(network: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """``network`` (the module whose forward computes the loss) in DDP; unchanged for one process.

    DDP broadcasts rank 0's weights at construction (every rank starts identical) and averages gradients.
    ``find_unused_parameters``: with simulated clicks a step may not touch every trainable part (no click
    embedding in a text-only step) and ranks draw different modes.
    """
    if not ranks.distributed:
        return network
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if ranks.backend == "nccl" else None
    return DistributedDataParallel(network, device_ids=device_ids, find_unused_parameters=True)


# ----------------------------------------------------------------------------------------------- launching
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
