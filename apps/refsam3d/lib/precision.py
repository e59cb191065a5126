"""Which precision the image encoder runs in at inference (``--conf precision``).

``auto`` (default): bfloat16 autocast where the hardware computes it natively — a CUDA GPU that supports bf16, or a
CPU with AMX tiles or AVX512-BF16 (oneDNN runs bf16 matmuls and convolutions on them: on a 2-core AVX512-BF16 Xeon a
cold vit_b request on the abdominal CT took 10.5 s instead of 15.0 s, docs/app.md) — and float32 elsewhere.
``bfloat16`` forces it, ``float32`` turns it off (e.g. to compare with a float32 run bit for bit). Only the prompt-independent encoding runs under autocast; the per-prompt decoder
stays in float32 (on CPU bf16 makes those small ops slower), and cached encodings are stored as today.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch

from lib.defaults import PRECISIONS


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(setting: str, device: str | torch.device) -> Optional[torch.dtype]:
    """``setting`` (one of :data:`PRECISIONS`) on ``device`` -> the autocast dtype, or None for float32."""
    setting = str(setting or "auto").strip().lower()
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    if setting == "float32":
        return None
    kind = torch.device(device).type
    if setting == "bfloat16":
        return torch.bfloat16
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if kind == "cpu" and cpu_flags() & {"amx_bf16", "avx512_bf16"} else None


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """``"bfloat16"`` / ``"float32"`` (None) for /info, logs and benchmark reports."""
    return str(dtype).replace("torch.", "") if dtype is not None else "float32"


def encoding_autocast(device: str | torch.device, dtype: Optional[torch.dtype]):
    """Autocast context for the image encoding (a no-op for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
