"""Simulated annotator clicks (SAM / VISTA3D / nnInteractive style), for training and for evaluation.

* :func:`next_click`: the next click of a simulated annotator -- at the interior point (maximum of the
  Euclidean distance transform, the volume border counting as boundary) of the largest connected error
  region; positive for a miss (false negative), negative for a false alarm (false positive).
* :func:`click_training_logits`: one training step's logits with simulated clicks. Per (crop, prompt) pair
  a random mode -- text only, text + clicks, clicks only (no text; only for pairs whose target is not
  empty) -- then ``R`` (random, 1..``click_max_rounds``) rounds, each adding one click per pair from the
  error of the model's own previous prediction (no gradient) and feeding the previous logits back as the
  dense prompt; the gradient flows through the last round. The image encoder runs once per step.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from .config import TrainConfig

TEXT, TEXT_CLICKS, CLICKS = "text", "text+clicks", "clicks"


@dataclass(frozen=True)
class Click:
    """A voxel position ``(d, h, w)`` in the mask's grid; ``positive`` = "this belongs to the structure"."""

    position: tuple[int, int, int]
    positive: bool
    region_size: int  # voxels of the error region it was placed in


def _as_bool(mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().to("cpu").numpy()
    return np.asarray(mask).astype(bool)


def interior_point(region: np.ndarray, rng: Optional[random.Random] = None) -> tuple[int, int, int]:
    """The voxel of ``region`` farthest from its boundary (EDT maximum; voxels outside the array count as
    background); ties: the first in C order, or a random one of them with ``rng``."""
    box = ndimage.find_objects(region.astype(np.uint8))[0]
    sub = np.pad(region[box], 1)  # the volume border is a boundary too
    dist = ndimage.distance_transform_edt(sub)
    best = np.flatnonzero(dist == dist.max())
    flat = best[rng.randrange(len(best))] if rng is not None and len(best) > 1 else best[0]
    idx = np.unravel_index(flat, sub.shape)
    return tuple(int(i) - 1 + s.start for i, s in zip(idx, box))  # type: ignore[return-value]


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask, 0
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes)) + 1
    return labels == best, int(sizes[best - 1])


def next_click(pred, target, rng: Optional[random.Random] = None) -> Optional[Click]:
    """Click at the interior point of the largest connected error region of ``pred`` vs ``target`` (3D
    bool arrays or tensors, same shape); None when the prediction is perfect. Ties between a miss and a
    false alarm of the same size go to the miss."""
    p, t = _as_bool(pred), _as_bool(target)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"pred {p.shape} and target {t.shape} must be the same 3D shape")
    miss, miss_n = _largest_component(t & ~p)
    false_alarm, fa_n = _largest_component(p & ~t)
    if miss_n == 0 and fa_n == 0:
        return None
    region, positive, size = (miss, True, miss_n) if miss_n >= fa_n else (false_alarm, False, fa_n)
    return Click(interior_point(region, rng), positive, size)


class ClickBuffer:
    """Clicks of N (image, prompt) pairs as the model takes them: points ``[1, N, P, 3]``, labels ``[1, N, P]``
    (-1 = no click: a pair whose prediction was already perfect gets padding in that round)."""

    def __init__(self, n: int) -> None:
        self.rows: list[list[tuple[tuple[int, int, int], int]]] = [[] for _ in range(n)]

    def add(self, i: int, click: Optional[Click]) -> None:
        self.rows[i].append((click.position, int(click.positive)) if click is not None else ((0, 0, 0), -1))

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        p = max(1, max(len(r) for r in self.rows))
        points = torch.zeros(1, len(self.rows), p, 3, device=device)
        labels = torch.full((1, len(self.rows), p), -1, dtype=torch.long, device=device)
        for i, row in enumerate(self.rows):
            for j, (pos, lab) in enumerate(row):
                points[0, i, j] = torch.tensor(pos, dtype=torch.float32)
                labels[0, i, j] = lab
        return points, labels


def choose_modes(target: torch.Tensor, cfg: TrainConfig, rng: random.Random) -> list[list[str]]:
    """A mode per (crop, prompt) pair, ``[B][K]``: text / text+clicks / clicks (clicks only where the target
    is not empty), drawn with the configured fractions."""
    weights = [max(0.0, cfg.click_text_only), max(0.0, cfg.click_text_and_clicks), max(0.0, cfg.click_only)]
    nonempty = target.flatten(2).sum(-1) > 0  # [B, K]
    modes = []
    for b in range(target.shape[0]):
        row = []
        for k in range(target.shape[1]):
            w = weights if bool(nonempty[b, k]) else weights[:2]
            row.append(rng.choices([TEXT, TEXT_CLICKS, CLICKS][:len(w)], weights=w)[0] if sum(w) > 0 else TEXT)
        modes.append(row)
    return modes


def click_training_logits(model, image: torch.Tensor, prompts: Sequence[str], target: torch.Tensor, cfg: TrainConfig,
                          rng: random.Random) -> tuple[torch.Tensor, dict]:
    """Logits ``[B, K, *crop]`` of one training step with simulated clicks (see the module docstring)."""
    enc = model.encode_image(image)  # once per step, with gradient
    b_count, k_count = target.shape[:2]
    modes = choose_modes(target, cfg, rng)
    rounds = rng.randint(1, max(1, int(cfg.click_max_rounds)))
    out: list[list[Optional[torch.Tensor]]] = [[None] * k_count for _ in range(b_count)]
    for b in range(b_count):
        enc_b = _slice_encoding(enc, b)
        for mode in (TEXT, TEXT_CLICKS, CLICKS):
            ks = [k for k in range(k_count) if modes[b][k] == mode]
            if not ks:
                continue
            if mode == TEXT:
                logits = model.decode(enc_b, [prompts[k] for k in ks])[0]
            else:
                logits = _click_rounds(model, enc_b, [prompts[k] if mode == TEXT_CLICKS else None for k in ks],
                                       target[b, ks], rounds, rng)
            for j, k in enumerate(ks):
                out[b][k] = logits[j]
    logits = torch.stack([torch.stack(row) for row in out])  # type: ignore[arg-type]
    counts = {m: sum(row.count(m) for row in modes) for m in (TEXT, TEXT_CLICKS, CLICKS)}
    return logits, {"click_rounds": rounds, "modes": counts}


def _click_rounds(model, enc, prompts: list[Optional[str]], target: torch.Tensor, rounds: int,
                  rng: random.Random) -> torch.Tensor:
    """``rounds`` click rounds for the pairs of one crop (all with text, or all without) -> last logits ``[N, ...]``."""
    n = len(prompts)
    buffer = ClickBuffer(n)
    device = target.device
    with_text = prompts[0] is not None
    prev: Optional[torch.Tensor] = None
    if with_text:  # the text answer is where the annotator starts
        with torch.no_grad():
            prev = model.decode(enc, prompts)
    pred = (prev[0] > 0) if prev is not None else torch.zeros_like(target, dtype=torch.bool)
    for r in range(rounds):
        for i in range(n):
            buffer.add(i, next_click(pred[i], target[i] > 0.5, rng))
        points, labels = buffer.tensors(device)
        last = r == rounds - 1
        with contextlib.nullcontext() if last else torch.no_grad():
            logits = model.decode(enc, prompts, points, labels, previous_mask=prev)
        if not last:
            prev = logits.detach()
            pred = prev[0] > 0
    return logits[0]


def _slice_encoding(enc, b: int):
    from lib.model import ImageEncoding

    return ImageEncoding([s[b:b + 1] for s in enc.stages], enc.mask_features[b:b + 1], enc.input_shape,
                         enc.scaled_shape)
