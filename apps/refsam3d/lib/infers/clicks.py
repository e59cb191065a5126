"""Clicks of a request, as the unmodified viewers send them: parsing, validation and the target label.

Two request formats (docs/app.md, "Clicks"):

* OHIF v3 Point Prompts for a model of type ``vista3d``: ``points`` (the selected segment's clicks, then the
  background clicks), ``point_labels`` (1 / 0, same length) and ``label_prompt`` (``[index of the selected segment]``);
* 3D Slicer's MONAI Label module for a model of type ``deepgrow``: ``foreground`` / ``background`` point lists and
  ``label`` (the selected segment's name), plus every option of the task's config.

Points are voxel indices ``[i, j, k]`` of the image as the server reads it (array axes 0, 1, 2 of MONAI's
``LoadImage``, before any re-orientation: OHIF's ``worldToIndex`` on the series volume, Slicer's ``RASToIJK``);
:func:`to_model_grid` maps them through the pre-processing (orientation, resampling) into the model's grid.
Anything malformed is an :class:`Unprocessable` (lib/errors.py) with a message naming the bad entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lib.infers.prompt_parsing import FREE_TEXT_NAME, Prompt, PromptParser, normalise
from lib.errors import Unprocessable

MAX_CLICKS = 64

TEXT_CLICKS, CLICKS_ONLY = "text+clicks", "clicks"


@dataclass(frozen=True)
class ClickRequest:
    """What a click request asks for: the target (name, mask value, text or None), the clicks, the options."""

    name: str
    value: int
    text: Optional[str]  # None: clicks only ("segment what I clicked")
    points: np.ndarray  # [N, 3] float64, voxel indices of the image as read
    labels: np.ndarray  # [N] int64: 1 positive, 0 negative
    reset: bool  # start over: no previous answer as the previous mask

    @property
    def mode(self) -> str:
        return CLICKS_ONLY if self.text is None else TEXT_CLICKS

    @property
    def prompt(self) -> Prompt:
        return (self.name, self.value, self.text or "")

    def key(self) -> Tuple:
        """Identity of the interaction (image and model settings aside): one last answer per target."""
        return (self.value, self.text)

    def click_set(self) -> frozenset:
        return frozenset((tuple(float(c) for c in p), int(l)) for p, l in zip(self.points, self.labels))


def _truthy(value: Any) -> bool:
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return str(value).strip().lower() in ("1", "true", "yes", "y", "on")


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, (str, list, tuple)) and len(value) == 0)


def _point_list(raw: Any, field: str) -> List[List[float]]:
    """``raw`` as a list of [i, j, k] numbers; 422 for anything else."""
    if not _given(raw):
        return []
    if not isinstance(raw, (list, tuple)):
        raise Unprocessable(f"{field} must be a list of [i, j, k] voxel coordinates, got {type(raw).__name__} {str(raw)[:80]!r}")
    if len(raw) > MAX_CLICKS:
        raise Unprocessable(f"{field} has {len(raw)} clicks; at most {MAX_CLICKS} are allowed per request")
    out: List[List[float]] = []
    for n, p in enumerate(raw):
        if not isinstance(p, (list, tuple)) or len(p) != 3:
            raise Unprocessable(f"{field}[{n}] must be 3 voxel coordinates [i, j, k], got {str(p)[:80]!r}")
        coords = []
        for c in p:
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(float(c)):
                raise Unprocessable(f"{field}[{n}] = {str(p)[:80]!r}: coordinates must be finite numbers")
            coords.append(float(c))
        out.append(coords)
    return out


def _label_list(raw: Any, n_points: int) -> List[int]:
    if not _given(raw):
        raw = []
    if not isinstance(raw, (list, tuple)):
        raise Unprocessable(f"point_labels must be a list of 1 (positive) / 0 (negative), got {str(raw)[:80]!r}")
    if len(raw) != n_points:
        raise Unprocessable(f"points has {n_points} clicks but point_labels has {len(raw)} labels: give one label "
                            "(1 positive, 0 negative) per click")
    out = []
    for n, v in enumerate(raw):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) not in (0.0, 1.0):
            raise Unprocessable(f"point_labels[{n}] = {v!r}: must be 1 (positive) or 0 (negative)")
        out.append(int(v))
    return out


def read_clicks(request: Dict[str, Any]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(points [N, 3], labels [N]) of the request, None when it has no clicks; 422 for malformed clicks."""
    vista = _given(request.get("points")) or _given(request.get("point_labels"))
    deepgrow = _given(request.get("foreground")) or _given(request.get("background"))
    if vista and deepgrow:
        raise Unprocessable("send clicks either as points + point_labels (OHIF, VISTA3D style) or as "
                            "foreground + background (3D Slicer, Deepgrow style), not both")
    if vista:
        points = _point_list(request.get("points"), "points")
        labels = _label_list(request.get("point_labels"), len(points))
    elif deepgrow:
        fg, bg = _point_list(request.get("foreground"), "foreground"), _point_list(request.get("background"), "background")
        points, labels = fg + bg, [1] * len(fg) + [0] * len(bg)
    else:
        return None
    if len(points) > MAX_CLICKS:
        raise Unprocessable(f"{len(points)} clicks; at most {MAX_CLICKS} are allowed per request")
    if not points:
        return None
    return np.asarray(points, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def _label_prompt_entries(raw: Any) -> List[Any]:
    if not _given(raw):
        return []
    if isinstance(raw, (list, tuple)):
        return list(raw)
    if isinstance(raw, str):
        return [s.strip() for s in raw.strip().strip("[]").split(",") if s.strip()]
    return [raw]


def parse_click_request(request: Dict[str, Any], parser: PromptParser) -> Optional[ClickRequest]:
    """The request's click target and clicks; None for a request without clicks (answered as text / labels).

    Target: ``label_prompt`` (one label; the free-text value stands for ``text_prompt``, or for "clicks only"
    when there is none), else Slicer's ``label`` (the segment's name: a label of the set is that label, any
    other name is written with the free-text value under that name), else ``text_prompt``, else clicks only.
    ``clicks_only: true`` drops the text (the target keeps its name and value).
    """
    clicks = read_clicks(request)
    if clicks is None:
        return None
    points, labels = clicks
    text = parser._text(request.get("text_prompt"))  # 422 for blank / over-long text
    entries = _label_prompt_entries(request.get("label_prompt"))
    if len(entries) > 1:
        raise Unprocessable(f"clicks refine one label: label_prompt must name one label, got {len(entries)} "
                            f"({str(request.get('label_prompt'))[:80]})")
    free = parser.free_value
    if entries:
        name = parser._resolve_label(entries[0])
        if name == FREE_TEXT_NAME:
            target: Prompt = parser._text_prompt(text) if text is not None else (FREE_TEXT_NAME, free, "")
        else:
            target = (name, parser.label_set.labels[name], parser.label_set.prompts[name])
    elif _given(request.get("label")) and isinstance(request.get("label"), str):
        segment = request["label"].strip()
        known = parser._by_text.get(normalise(segment))
        if known is not None:
            target = (known, parser.label_set.labels[known], parser.label_set.prompts[known])
        elif text is not None:
            _, value, prompt = parser._text_prompt(text)
            target = (segment, value, prompt)
        else:
            target = (segment, free, "")
    elif text is not None:
        target = parser._text_prompt(text)
    else:
        target = (FREE_TEXT_NAME, free, "")
    name, value, prompt = target
    if _truthy(request.get("clicks_only", False)):
        prompt = ""
    reset = _truthy(request.get("reset_state", False)) or _truthy(request.get("reset", False))
    return ClickRequest(name, int(value), prompt or None, points, labels, reset)


def drop_free_text_from_auto(request: Dict[str, Any], free_value: int) -> Dict[str, Any]:
    """OHIF's Auto-segmentation / Class Prompts for a ``vista3d`` model send every label index of ``/info``:
    ``background`` (0) always means nothing there, the free-text value nothing without a ``text_prompt``: both are
    dropped from a list of several (the other entries stay)."""
    entries = _label_prompt_entries(request.get("label_prompt"))
    if len(entries) < 2:
        return request
    drop = {"0", "0.0", "background"}
    if not _given(request.get("text_prompt")):
        drop |= {str(free_value), f"{free_value}.0", FREE_TEXT_NAME}
    kept = [e for e in entries if normalise(str(e).strip()) not in drop]
    return {**request, "label_prompt": kept} if kept and len(kept) < len(entries) else request


def check_inside(points: np.ndarray, shape: Sequence[int]) -> None:
    """422 when a click is outside the image (voxel indices of the image as read, ``shape`` its size)."""
    shape = [int(s) for s in shape][-3:]
    for n, p in enumerate(points):
        if any(not (-0.5 <= c < s - 0.5) for c, s in zip(p, shape)):
            raise Unprocessable(
                f"click {n} at {[round(float(c), 2) for c in p]} is outside the image: it has "
                f"{' x '.join(map(str, shape))} voxels (indices 0..{shape[0] - 1}, 0..{shape[1] - 1}, 0..{shape[2] - 1})"
            )


def to_model_grid(points: np.ndarray, original_affine: np.ndarray, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Voxel indices of the image as read -> voxel indices (float) of the pre-processed image (re-oriented,
    resampled), through world coordinates: ``inv(affine) @ original_affine``; clamped into the grid."""
    hom = np.concatenate([np.asarray(points, dtype=np.float64), np.ones((len(points), 1))], axis=1)
    m = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(original_affine, dtype=np.float64)
    out = (hom @ m.T)[:, :3]
    upper = np.asarray([int(s) - 1 for s in shape][-3:], dtype=np.float64)
    return np.clip(out, 0.0, upper)
