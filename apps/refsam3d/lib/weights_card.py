"""What the served weights are, in one line a person reads in a viewer: trained or not, on what, how good.

The facts come from the published checkpoint's ``extra`` (written by the train task, ``scripts/train.py`` and
the hippocampus benchmark): the label set, the trained labels, the test evaluation on held-out cases
(the one made with the flips the server averages, ``--conf mirror_axes``: ``test_evaluation`` mirrored,
``test_evaluation_single_pass`` one pass), a held-out
estimate for models trained on every case, and the last validation Dice.  Reading a checkpoint is cached by
(path, mtime, size), so ``/info`` stays cheap.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

UNTRAINED = ("UNTRAINED weights: masks are meaningless until the model is trained "
             "(POST /train/refsam3d, or scripts/train.py and publish model/refsam3d_<preset>.pt)")


def _dice(value: Any) -> Optional[float]:
    try:
        return round(float(value), 4)
    except (TypeError, ValueError):
        return None


def trained_flip_axes(extra: Optional[Dict[str, Any]]) -> Tuple[int, ...]:
    """The flips the weights were trained with (``extra["training"]["config"]["flip_axes"]``): nnU-Net's rule for
    test-time mirroring; ``()`` for weights without a training record (untrained, SAM-initialised)."""
    training = (extra or {}).get("training")
    config = training.get("config") if isinstance(training, dict) else None
    axes = config.get("flip_axes") if isinstance(config, dict) else None
    try:
        return tuple(sorted({int(a) for a in axes if int(a) in (0, 1, 2)})) if axes else ()
    except (TypeError, ValueError):
        return ()


def summarise_extra(extra: Dict[str, Any], mirror_axes: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """The facts of a checkpoint's ``extra`` that say what the weights were trained on and how well they do;
    ``mirror_axes``: the test evaluation made with the flips the server averages comes first."""
    spec = extra.get("label_set")
    label_set = extra.get("label_set_name") or (spec.get("name") if isinstance(spec, dict) else spec)
    out: Dict[str, Any] = {"label_set": label_set, "trained_labels": list(extra.get("trained_labels") or []),
                           "source": extra.get("source")}
    trained_prompts = extra.get("trained_prompts")
    if isinstance(trained_prompts, dict) and trained_prompts:  # the structures it was trained to find, by name
        out["trained_labels"] = list(dict.fromkeys([*out["trained_labels"], *map(str, trained_prompts)]))
    keys = ["test_evaluation_single_pass", "test_evaluation"]
    if mirror_axes is not None:  # stable sort: the evaluation made as the server predicts first
        keys.sort(key=lambda k: sorted((extra.get(k) or {}).get("mirror_axes") or []) != sorted(mirror_axes))
    for key in keys:
        ev = extra.get(key)
        if isinstance(ev, dict) and _dice((ev.get("mean") or {}).get("dice")) is not None:
            out["test"] = {"dice": _dice(ev["mean"]["dice"]), "num_cases": ev.get("num_cases"),
                           "mirror_axes": ev.get("mirror_axes", []), "from": key,
                           "per_label_dice": {n: _dice(v.get("dice")) for n, v in (ev.get("per_label") or {}).items()}}
            break
    estimate = extra.get("held_out_estimate")
    if isinstance(estimate, dict) and _dice(estimate.get("mean_dice")) is not None:
        out["held_out_estimate"] = {"dice": _dice(estimate["mean_dice"]), "checkpoint": estimate.get("checkpoint")}
    training = extra.get("training") if isinstance(extra.get("training"), dict) else {}
    if training:
        out["training"] = {k: training.get(k) for k in ("run_id", "epoch", "iteration", "time") if k in training}
        val = training.get("val")
        if isinstance(val, dict) and _dice(val.get("mean_dice")) is not None:
            out["validation_dice"] = _dice(val["mean_dice"])
    return out


def headline(summary: Optional[Dict[str, Any]], serving_label_set: str) -> str:
    """``trained on msd_hippocampus, test Dice 0.891 (40 held-out cases)`` or :data:`UNTRAINED`."""
    if summary is None:
        return UNTRAINED
    if summary.get("unreadable"):
        return f"published weights could not be read ({summary['unreadable']})"
    trained_on = summary.get("label_set") or "an unrecorded label set"
    text = f"trained on {trained_on}"
    if "test" in summary:
        t = summary["test"]
        text += f", test Dice {t['dice']:.3f}" + (f" ({t['num_cases']} held-out cases)" if t.get("num_cases") else "")
    elif "held_out_estimate" in summary:
        text += f", held-out estimate Dice {summary['held_out_estimate']['dice']:.3f} (trained on every case)"
    elif "validation_dice" in summary:
        text += f", validation Dice {summary['validation_dice']:.3f}"
    else:
        text += ", no test Dice recorded"
    if summary.get("label_set") and summary["label_set"] != serving_label_set:
        text += f"; SERVED WITH LABEL SET {serving_label_set}: names and values may not match"
    return text


def knows_line(card: Dict[str, Any]) -> str:
    """``"; knows: anterior hippocampus, posterior hippocampus"``: the structures the served weights were trained on."""
    labels = card.get("trained_labels") or []
    return f"; knows: {', '.join(labels)}" if card.get("trained") and labels else ""


@functools.lru_cache(maxsize=8)
def _read_extra(path: str, mtime_ns: int, size: int) -> Dict[str, Any]:
    from lib.model import read_checkpoint

    try:
        return {"extra": read_checkpoint(path).get("extra", {}) or {}}
    except Exception as e:  # noqa: BLE001 - half-written or foreign file: say so, the store keeps serving
        return {"unreadable": f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"}


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int, size: int, mirror_axes: Optional[Tuple[int, ...]] = None) -> Dict[str, Any]:
    read = _read_extra(path, mtime_ns, size)
    return summarise_extra(read["extra"], mirror_axes) if "extra" in read else {"unreadable": read["unreadable"]}


def _stat_key(path: str | os.PathLike) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(Path(path)), st.st_mtime_ns, st.st_size)


def read_summary(path: str | os.PathLike, mirror_axes: Optional[Sequence[int]] = None) -> Optional[Dict[str, Any]]:
    """:func:`summarise_extra` of the checkpoint at ``path`` (None when there is no file)."""
    key = _stat_key(path)
    return None if key is None else dict(_read(*key, None if mirror_axes is None else tuple(mirror_axes)))


def read_extra(path: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The checkpoint's ``extra`` at ``path`` (None when there is no file or it cannot be read); cached, do not modify."""
    key = _stat_key(path)
    return None if key is None else _read_extra(*key).get("extra")
