"""Command-line plumbing shared by ``scripts/`` and ``benchmarks/``: runtime flags and start-up.

Kept free of heavy imports so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_runtime_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``, ``--threads`` and ``--no-progress``, the same in every command."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")


def start_runtime(args: argparse.Namespace) -> None:
    """INFO logging with timestamps, and torch's CPU thread count from ``--threads``."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
