"""Save / load OUR trained RefSAM3D weights (not SAM's; see ``sam_checkpoint.py`` for those).

A checkpoint is a ``torch.save`` dict: ``format`` tag, ``arch_version`` (bumped whenever a code change
renames or reshapes stored tensors, so an old file fails with a version message, not a key error),
``config`` (rebuilds the architecture),
``sam_initialised``, ``state_dict`` (trainable and other non-frozen tensors only: neither SAM's frozen
encoder tensors nor the text encoder), and ``extra`` (label names, epoch, metrics; plain
Python/tensor values). Writes are atomic (temporary file + ``os.replace``).
"""

from __future__ import annotations

import os
import stat
import uuid
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .build import build_refsam3d
from .refsam3d import RefSAM3D
from .text_encoder import TextEncoder

FORMAT = "refsam3d-checkpoint/v1"
# 1: first network; 2: 3D pixel decoder with 8 full-resolution channels (commit 98b9e4f). Bump on any change
# to the stored tensors' names or shapes (ADDED tensors need no bump: list them in OPTIONAL_PARTS).
ARCH_VERSION = 2
# parts added after version 2 files were written: a file without them loads, they keep their initial
# values (built so that they change nothing) and the loader says which are missing
OPTIONAL_PARTS = {"prompt_encoder.": "click prompts (point / no-text embeddings, previous-mask encoder)",
                  "click_refinement.": "local click refinement (full-resolution edit around each click)"}


class CheckpointError(ValueError):
    """Not a (complete) RefSAM3D checkpoint."""


def save_checkpoint(model: RefSAM3D, path: Union[str, Path], extra: Optional[dict[str, Any]] = None,
                    config_overrides: Optional[dict[str, Any]] = None) -> Path:
    """Atomically write ``model``'s own weights + config (+ ``extra``) to ``path``; returns the path.

    ``config_overrides`` replace config entries in the file only (e.g. the text encoder's public name instead of
    the local folder it was loaded from).

    Frozen tensors are left out only when they come from SAM (``sam_initialised``): a vit_b built
    without SAM weights stores its (random) frozen encoder too, so that it can be rebuilt exactly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skip = model.frozen_state_keys() if model.sam_initialised else {k for k in model.state_dict() if k.startswith("text_encoder.")}
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items() if k not in skip}
    payload = {"format": FORMAT, "arch_version": ARCH_VERSION, "config": {**model.config, **(config_overrides or {})}, "sam_initialised": bool(model.sam_initialised),
               "state_dict": state, "extra": dict(extra or {})}
    return _atomic_save(payload, path)


def update_checkpoint_extra(path: Union[str, Path], **extra: Any) -> Path:
    """Add or replace ``extra`` entries (e.g. test metrics) of a saved checkpoint; weights untouched, atomic."""
    payload = read_checkpoint(path)
    payload["extra"] = {**payload.get("extra", {}), **extra}
    return _atomic_save(payload, Path(path))


def _atomic_save(payload: dict[str, Any], path: Path) -> Path:
    """``torch.save`` to a hidden temporary file in the same folder, fsync, then rename over ``path``.

    The temporary file is created by ``open()`` (0666 minus the umask, as any new file); a replaced file keeps
    its own mode."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            try:
                os.fchmod(f.fileno(), stat.S_IMODE(os.stat(path).st_mode))
            except FileNotFoundError:  # a new file: open()'s mode
                pass
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Load and validate the checkpoint dict (clear errors for missing, truncated or foreign files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RefSAM3D checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{str(path)!r} ({path.stat().st_size} bytes) is not a readable RefSAM3D checkpoint "
                              f"(truncated or corrupt file?): {type(err).__name__}: {str(err)[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if isinstance(payload, dict) and any(str(k).startswith("image_encoder.") for k in payload):
            raise CheckpointError(f"{str(path)!r} is a SAM checkpoint, not a RefSAM3D one: pass it as sam_checkpoint=")
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{str(path)!r} is not a RefSAM3D checkpoint (format {found!r}, expected {FORMAT!r})")
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{str(path)!r} is a damaged RefSAM3D checkpoint: no {key!r}")
    version = payload.get("arch_version")
    if version is not None and version != ARCH_VERSION:
        raise CheckpointError(f"{str(path)!r} was written by RefSAM3D code with architecture version {version}, this "
                              f"code has version {ARCH_VERSION}: the stored tensors do not fit. Use the matching code "
                              "version, or train again (POST /train/refsam3d or scripts/train.py)")
    return payload


def _version_hint(payload: dict[str, Any]) -> str:
    if payload.get("arch_version") is None:
        return (" It stores no architecture version, so it was probably written by an older RefSAM3D code version:"
                " train again (POST /train/refsam3d or scripts/train.py)")
    return ""


def load_checkpoint(
    path: Union[str, Path],
    sam_checkpoint: Optional[Union[str, Path]] = None,
    text_encoder: Optional[Union[str, Path, TextEncoder]] = None,
    map_location: Union[str, torch.device] = "cpu",
    require_sam: bool = True,
) -> RefSAM3D:
    """Rebuild the model from the stored config and load its weights; ``model.checkpoint_extra`` = ``extra``.

    A checkpoint trained on SAM weights needs ``sam_checkpoint`` (its frozen encoder is not stored);
    ``require_sam=False`` builds it anyway with a random encoder (with a warning; for tests only).
    ``text_encoder`` defaults to the stored name/folder. Parts newer than the file (``OPTIONAL_PARTS``)
    keep their initial values: ``model.checkpoint_missing_parts`` names them (and a warning says so).
    """
    payload = read_checkpoint(path, "cpu")
    cfg = dict(payload["config"])
    preset = cfg.pop("preset")
    stored_text = cfg.pop("text_encoder", None)
    cfg.setdefault("image_skip_channels", [])  # options added later: files without them were built without them
    cfg.setdefault("drop_path_rate", 0.0)
    if payload.get("sam_initialised") and sam_checkpoint is None and require_sam:
        raise CheckpointError(f"{str(path)!r} was trained on the frozen SAM ViT-B encoder, which it does not contain: "
                              "pass sam_checkpoint='.../sam_vit_b_01ec64.pth'")
    try:
        model = build_refsam3d(preset, sam_checkpoint, text_encoder if text_encoder is not None else stored_text, **cfg)
    except TypeError as err:  # a config key this code does not know
        raise CheckpointError(f"{str(path)!r} has a model config this code cannot build ({err})."
                              + _version_hint(payload)) from None
    state = payload["state_dict"]
    own = model.state_dict()
    bad = [f"{k}: stored {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{str(path)!r} does not fit the rebuilt model (different text encoder width?): {bad[:3]}."
                              + _version_hint(payload))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{str(path)!r} has tensors the model does not have: {result.unexpected_keys[:5]}."
                              + _version_hint(payload))
    allowed_missing = model.frozen_state_keys() if payload.get("sam_initialised") else {k for k in own if k.startswith("text_encoder.")}
    lacking = {prefix: what for prefix, what in OPTIONAL_PARTS.items()
               if any(k.startswith(prefix) for k in result.missing_keys)}
    allowed_missing |= {k for k in result.missing_keys if any(k.startswith(prefix) for prefix in lacking)}
    incomplete = sorted(set(result.missing_keys) - allowed_missing)
    if incomplete:
        raise CheckpointError(f"{str(path)!r} is incomplete: {len(incomplete)} tensors missing, e.g. {incomplete[:5]}."
                              + _version_hint(payload))
    model.checkpoint_extra = payload.get("extra", {})  # type: ignore[attr-defined]
    # parts this file predates: {module prefix: what it is}; they start at their (neutral) initial values
    model.checkpoint_missing_parts = {p.rstrip("."): what for p, what in lacking.items()}  # type: ignore[attr-defined]
    if lacking:
        warnings.warn(f"{str(path)!r} predates {', '.join(f'{p.rstrip(chr(46))} ({w})' for p, w in lacking.items())}: "
                      "those parts start untrained (text-only answers are unchanged); fine-tune to train them",
                      stacklevel=2)
    return model.to(map_location)
