"""The one rule that turns a ``device`` setting into a torch device (server, training, benchmarks)."""

from __future__ import annotations

import logging

import torch

from lib.defaults import DEFAULT_DEVICE

logger = logging.getLogger(__name__)


def resolve_device(name: str | torch.device | None = DEFAULT_DEVICE) -> torch.device:
    """``auto`` (or empty) -> CUDA when available, else the CPU; ``cuda[:N]`` without CUDA -> the CPU, with a warning."""
    if isinstance(name, torch.device):
        return name
    text = str(name or "").strip().lower()
    if text in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"device '{text}' requested but CUDA is not available; using the CPU")
        return torch.device("cpu")
    return torch.device(text)
