"""Clicks on a whole volume: decode again only the sliding windows that the clicks and the previous mask touch.

The windows are MONAI's ``sliding_window_inference`` windows of the text path (same roi, overlap, padding and
keys as :func:`lib.inference.sliding_window_segment`), so the cached encodings of a study are reused: a click
request runs the decoder only, on the *touched* windows (a click inside, or a voxel where the previous mask differs
from the base answer by >= 0.5: what earlier clicks changed, e.g. an object they grew across a window border), and
the encoder only for a touched window whose encoding is not cached.  Untouched windows keep the base answer
(the text-only probabilities for text + clicks; nothing for clicks only).  Blending, with the Gaussian window
weights ``w`` of the text path::

    p = (sum_touched w * p_click + (sum_all w - sum_touched w) * p_base) / sum_all w

so a voxel covered only by touched windows gets the click answer, one covered by none keeps the base answer,
and the overlap in between is blended as the text path blends neighbouring windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, MutableMapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from lib.inference import (_expand, _model_device, _window_key, encode_window, flip_combinations, mirror_points,
                           resolve_overlap)

PREVIOUS_THRESHOLD = 0.5
LOGIT_EPS = 1e-4


@dataclass
class ClickStats:
    """What a click decode did: windows in the volume, decoded with the clicks, and encoded (cache misses)."""

    total: int = 0
    decoded: int = 0
    encoded: int = 0
    clicks_used: int = 0
    touched: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"total": self.total, "decoded": self.decoded, "encoded": self.encoded}


def _pad_sizes(shape: Sequence[int], roi: Sequence[int]) -> list:
    """``F.pad`` sizes (last axis first) that ``sliding_window_inference`` applies to a volume smaller than roi."""
    pad = []
    for s, r in zip(reversed([int(x) for x in shape]), reversed([int(x) for x in roi])):
        diff = max(r - s, 0)
        pad.extend([diff // 2, diff - diff // 2])
    return pad


def _to_logits(p: torch.Tensor) -> torch.Tensor:
    p = p.float().clamp(LOGIT_EPS, 1.0 - LOGIT_EPS)
    return torch.log(p) - torch.log1p(-p)


def _padded_prompts(shape: Sequence[int], roi: Sequence[int], points: np.ndarray, point_labels: np.ndarray,
                    base: Optional[torch.Tensor], previous: Optional[torch.Tensor]) -> tuple:
    """The prompts in the grid ``sliding_window_inference`` pads to: ``points [N, 3]`` (float64) and
    ``labels [N]``; the previous answer ``[*padded]`` and where it differs from the base answer by >= 0.5
    (both None without a previous answer)."""
    pad = _pad_sizes(shape, roi)
    before = torch.tensor([pad[2 * (2 - a)] for a in range(3)], dtype=torch.float64)
    pts = torch.as_tensor(np.asarray(points, dtype=np.float64)).reshape(-1, 3) + before
    lbl = torch.as_tensor(np.asarray(point_labels, dtype=np.int64)).reshape(-1)
    if previous is None:
        return pts, lbl, None, None

    def padded(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t[None, None], pad, mode="constant", value=0.0)[0, 0] if any(pad) else t

    delta = previous.float() - (base.float() if base is not None else 0.0)
    return pts, lbl, padded(previous.float()), padded((delta.abs() >= PREVIOUS_THRESHOLD).float()) > 0


def click_probabilities(
    model,
    image: torch.Tensor,
    text: Optional[str],
    points: np.ndarray,
    point_labels: np.ndarray,
    roi_size: Sequence[int],
    overlap: float | str = "auto",
    base: Optional[torch.Tensor] = None,
    previous: Optional[torch.Tensor] = None,
    sw_batch_size: int = 1,
    device: Optional[str | torch.device] = None,
    encodings: Optional[MutableMapping[Hashable, Any]] = None,
    precision: Optional[torch.dtype] = None,
    key_prefix: Tuple = (),
) -> tuple[torch.Tensor, ClickStats]:
    """Probabilities ``[D, H, W]`` of one target after clicks, and what was decoded.

    ``image [1, D, H, W]`` (or ``[1, 1, D, H, W]``) in the model grid; ``points [N, 3]`` voxel indices of that
    grid, ``point_labels [N]`` 1 / 0; ``text`` None for clicks only; ``base`` / ``previous`` probability maps
    ``[D, H, W]`` (the text-only answer; the last answer, given to the model as logits); ``encodings`` the
    study's cached window encodings (missing ones are encoded and added, under ``precision`` autocast), under
    ``key_prefix`` + window key (a mirrored copy's own windows, as :func:`lib.inference.mirrored_segment` keys them).
    """
    device = torch.device(device) if device is not None else _model_device(model)
    x = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    x = (x[None] if x.ndim == 4 else x).float()
    shape = tuple(int(s) for s in x.shape[2:])
    roi = tuple(int(r) for r in roi_size)
    pts, lbl, prev, changed = _padded_prompts(shape, roi, points, point_labels, base, previous)
    store: MutableMapping[Hashable, Any] = encodings if encodings is not None else {}
    stats = ClickStats()
    used: set = set()
    roi_t = torch.tensor(roi, dtype=torch.float64)

    def predictor(window: torch.Tensor, coords) -> torch.Tensor:
        outs = []
        for b in range(window.shape[0]):
            stats.total += 1
            key = key_prefix + _window_key(coords[b])
            region = tuple(coords[b][2:])
            start = torch.tensor([s.start for s in region], dtype=torch.float64)
            local = pts - start
            inside = ((local >= -0.5) & (local < roi_t - 0.5)).all(dim=1)
            prev_win = prev[region] if prev is not None else None
            touched = bool(inside.any()) or (changed is not None and bool(changed[region].any()))
            if not touched:
                outs.append(torch.zeros((1, 2, *roi), device=device))
                continue
            enc = store.get(key)
            if enc is None:
                enc = encode_window(model, window[b : b + 1], device, precision)
                store[key] = enc
                stats.encoded += 1
            kwargs: dict = {}
            if bool(inside.any()):
                used.update(int(i) for i in torch.nonzero(inside).flatten())
                kwargs["points"] = local[inside].float()[None, None].to(device)  # [1, 1, P, 3]
                kwargs["point_labels"] = lbl[inside][None, None].to(device)  # [1, 1, P]
            if prev_win is not None:
                kwargs["previous_mask"] = _to_logits(prev_win)[None, None].to(device)
            logits = model.decode(_expand(enc, device), [text], **kwargs)  # [1, 1, *roi]
            stats.decoded += 1
            stats.touched.append(key)
            p = torch.sigmoid(logits.float())
            outs.append(torch.cat([p, torch.ones_like(p)], dim=1))
        return torch.cat(outs, dim=0)

    with torch.no_grad():
        out = sliding_window_inference(
            x, roi_size=roi, sw_batch_size=max(1, int(sw_batch_size)), predictor=predictor,
            overlap=resolve_overlap(overlap, shape, roi), mode="gaussian", padding_mode="constant", cval=0.0,
            sw_device=device, device=device, with_coord=True,
        )
    blended, touched_weight = out[0, 0].float(), out[0, 1].float().clamp(0.0, 1.0)
    probs = blended if base is None else blended + (1.0 - touched_weight) * base.to(blended.device).float()
    stats.clicks_used = len(used)
    return probs.clamp_(0.0, 1.0).cpu(), stats


def mirrored_click_probabilities(model, image: torch.Tensor, text: Optional[str], points: np.ndarray,
                                 point_labels: np.ndarray, *args: Any, base: Optional[torch.Tensor] = None,
                                 previous: Optional[torch.Tensor] = None, mirror_axes: Sequence[int] = (),
                                 **kwargs: Any) -> tuple[torch.Tensor, ClickStats]:
    """:func:`click_probabilities` averaged over the flips of ``mirror_axes``, as the text path mirrors its answer:
    each mirrored pass decodes the mirrored image (its own cached windows) with the mirrored clicks, base and
    previous answer, and is flipped back. ``args`` / ``kwargs``: the rest of :func:`click_probabilities`' arguments."""
    x = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    x = (x[None] if x.ndim == 4 else x).float()  # [1, 1, D, H, W]
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    total: Optional[torch.Tensor] = None
    stats = ClickStats()
    combos = flip_combinations(mirror_axes)
    for dims in combos:
        axes = [d - 2 for d in dims]  # tensor dims of [1, 1, D, H, W] -> axes of [D, H, W]
        flip = (lambda t: t.flip(axes) if t is not None else None) if axes else (lambda t: t)
        clicks = mirror_points(points, dims, x.shape[2:])
        probs, one = click_probabilities(model, x.flip(dims) if dims else x, text, clicks, point_labels, *args,
                                         base=flip(base), previous=flip(previous),
                                         key_prefix=("flip", dims) if dims else (), **kwargs)
        probs = flip(probs)
        total = probs if total is None else total.add_(probs)
        stats.total, stats.decoded, stats.encoded = (stats.total + one.total, stats.decoded + one.decoded,
                                                     stats.encoded + one.encoded)
        stats.clicks_used = max(stats.clicks_used, one.clicks_used)
        stats.touched += one.touched
    assert total is not None
    return (total.div_(len(combos)) if len(combos) > 1 else total), stats
