"""Interactive evaluation: a simulated annotator clicks until the mask is right (the standard protocol).

Per case and label: the first answer from the text prompt (or, without text, from one click at the
interior point of the target), then up to N clicks, each at the interior point of the largest remaining
error region of that label's mask (positive for a miss, negative for a false alarm:
:func:`lib.training.clicks.next_click`, the training simulation), the previous logits fed back as the
dense prompt. With ``mirror_axes`` every answer is decoded as the server mirrors it (:class:`MirroredDecoding`).
Dice (MONAI's ``DiceMetric``) after each click; NoC@85 / NoC@90 = clicks needed to reach
that Dice (N + 1 when never). Masks are the server's: one label map, each voxel to its most probable
prompt above the threshold. The volume is decoded whole (padded to at least the window, as MONAI's
sliding window pads), with one image encoding per case: meant for volumes that fit one window (MSD
hippocampus); larger volumes are refused.

``oracle``: each click is answered by an oracle instead of the model, as an upper bound of what clicks
can do: ``"region"`` corrects the whole connected error region the click lands in, ``"ball:R"`` the error
voxels within R voxels of it (a local edit, a brush of radius R).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from lib.click_inference import LOGIT_EPS
from lib.evaluation import _json_safe, dice_per_label, probs_to_masks
from lib.inference import flip_combinations, mirror_points
from lib.training.clicks import ClickBuffer, next_click
from lib.training.prompts import LabelEntry, label_map_to_binary

NOC_THRESHOLDS = (0.85, 0.90)


def _pad_to(x: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad the last 3 axes to at least ``size``, symmetric (MONAI's sliding window); returns the offsets."""
    before, pads = [], []
    for n, r in zip(x.shape[-3:], size):
        diff = max(0, int(r) - int(n))
        before.append(diff // 2)
        pads.append((diff // 2, diff - diff // 2))
    flat = [v for pair in reversed(pads) for v in pair]  # F.pad: last axis first
    return (F.pad(x, flat) if any(flat) else x), before


def _masks(logits: torch.Tensor, crop: tuple, threshold: float) -> torch.Tensor:
    """Logits ``[1, K, *padded]`` -> the server's masks ``[K, D, H, W]`` (bool, on the CPU) inside ``crop``."""
    return probs_to_masks(torch.sigmoid(logits[0][(slice(None), *crop)].float()).cpu(), threshold)


class MirroredDecoding:
    """``model`` decoding as the server does with ``--conf mirror_axes``: each answer the mean of the passes over the
    flips of ``axes`` (:func:`lib.inference.flip_combinations`), each pass given the flipped image, clicks and
    previous answer and flipped back; returned as logits of that mean (the next round's previous answer)."""

    def __init__(self, model, axes: Sequence[int]):
        self.model, self.combos = model, flip_combinations(axes)

    def parameters(self):
        return self.model.parameters()

    def encode_image(self, x: torch.Tensor):
        return [self.model.encode_image(x.flip(d) if d else x) for d in self.combos], tuple(x.shape[2:])

    def decode(self, enc, text, points=None, point_labels=None, previous_mask=None) -> torch.Tensor:
        encodings, shape = enc
        total: Optional[torch.Tensor] = None
        for dims, e in zip(self.combos, encodings):
            pts = mirror_points(points, dims, shape) if dims and points is not None else points  # [1, K, P, 3]
            prev = previous_mask.flip(dims) if dims and previous_mask is not None else previous_mask
            p = torch.sigmoid(self.model.decode(e, text, pts, point_labels, previous_mask=prev).float())
            p = p.flip(dims) if dims else p
            total = p if total is None else total + p
        assert total is not None
        p = (total / len(self.combos)).clamp(LOGIT_EPS, 1.0 - LOGIT_EPS)
        return torch.log(p) - torch.log1p(-p)


def noc(dice_curve: Sequence[float], threshold: float, first_click: int, n_clicks: int) -> int:
    """Clicks needed to reach ``threshold`` (the curve's entry i is after ``first_click + i`` clicks); N + 1 if never."""
    for i, d in enumerate(dice_curve):
        if d is not None and d >= threshold:
            return first_click + i
    return n_clicks + 1


def parse_oracle(oracle: Optional[str]) -> Optional[int]:
    """``"region"`` -> 0 (the whole error region), ``"ball:R"`` -> R voxels; None stays None (the model answers)."""
    if oracle is None:
        return None
    if oracle == "region":
        return 0
    kind, _, radius = oracle.partition(":")
    if kind != "ball" or not radius.isdigit() or int(radius) < 1:
        raise ValueError(f"oracle must be 'region' or 'ball:R' with R >= 1 voxels, got {oracle!r}")
    return int(radius)


def oracle_fix(pred: torch.Tensor, gt: torch.Tensor, click, radius: int) -> torch.Tensor:
    """``pred [D, H, W]`` bool with the error at ``click`` corrected: its whole connected error region
    (``radius`` 0) or the error voxels within ``radius`` voxels of it."""
    p, t = pred.numpy(), gt.numpy()
    if radius == 0:
        regions, _ = ndimage.label((t & ~p) if click.positive else (p & ~t))
        fix = regions == regions[click.position]
    else:
        dist2 = sum((axis - c) ** 2 for axis, c in zip(np.indices(p.shape), click.position))
        fix = (p != t) & (dist2 <= radius * radius)
    out = p.copy()
    out[fix] = t[fix]
    return torch.from_numpy(out)


def interactive_case(model, image: torch.Tensor, gt: torch.Tensor, prompts: Sequence[str], n_clicks: int,
                     use_text: bool = True, roi_size: Sequence[int] = (0, 0, 0), threshold: float = 0.5,
                     device: Optional[torch.device] = None, oracle: Optional[str] = None) -> dict[str, Any]:
    """One case: ``image [1, 1, D, H, W]``, ``gt [K, D, H, W]`` bool -> ``{"dice": [[per label] per step],
    "clicks": [[(d, h, w, positive) per click] per label], "first_click": 0 or 1}``; with ``oracle`` (text
    only) the clicks are answered by :func:`oracle_fix` instead of the model."""
    if oracle is not None:
        return _oracle_case(model, image, gt, prompts, n_clicks, roi_size, threshold, device, parse_oracle(oracle))
    device = device or next(model.parameters()).device
    k = len(prompts)
    x, off = _pad_to(image.float(), roi_size)
    crop = tuple(slice(o, o + n) for o, n in zip(off, image.shape[-3:]))
    buffer = ClickBuffer(k)
    clicks: list[list[tuple[int, int, int, bool]]] = [[] for _ in range(k)]
    text: list[Optional[str]] = list(prompts) if use_text else [None] * k

    def add_clicks(pred: torch.Tensor) -> None:
        for i in range(k):
            c = next_click(pred[i], gt[i])
            if c is not None:
                clicks[i].append((*c.position, c.positive))
                c = type(c)(tuple(p + o for p, o in zip(c.position, off)), c.positive, c.region_size)
            buffer.add(i, c)

    curve: list[list[float]] = []
    with torch.no_grad():
        enc = model.encode_image(x.to(device))
        if not use_text:  # the first click: the interior point of each target
            add_clicks(torch.zeros_like(gt))
        points, labels = buffer.tensors(device) if not use_text else (None, None)
        logits = model.decode(enc, text, points, labels)
        for step in range(n_clicks + (1 if use_text else 0)):
            pred = _masks(logits, crop, threshold)
            curve.append(dice_per_label(pred, gt))
            if step == n_clicks - (0 if use_text else 1):
                break
            add_clicks(pred)
            points, labels = buffer.tensors(device)
            logits = model.decode(enc, text, points, labels, previous_mask=logits)
    return {"dice": curve, "clicks": clicks, "first_click": 0 if use_text else 1}


def _oracle_case(model, image, gt, prompts, n_clicks, roi_size, threshold, device, radius: int) -> dict[str, Any]:
    """:func:`interactive_case` with the text answer from the model and every click answered by the oracle."""
    device = device or next(model.parameters()).device
    x, off = _pad_to(image.float(), roi_size)
    crop = tuple(slice(o, o + n) for o, n in zip(off, image.shape[-3:]))
    with torch.no_grad():
        logits = model.decode(model.encode_image(x.to(device)), list(prompts))
    pred = _masks(logits, crop, threshold)  # [K, D, H, W]
    curve, clicks = [dice_per_label(pred, gt)], [[] for _ in prompts]
    for _ in range(n_clicks):
        for i in range(len(prompts)):
            c = next_click(pred[i], gt[i])
            if c is not None:
                clicks[i].append((*c.position, c.positive))
                pred[i] = oracle_fix(pred[i], gt[i], c, radius)
        curve.append(dice_per_label(pred, gt))
    return {"dice": curve, "clicks": clicks, "first_click": 0}


def evaluate_clicks(model, entries: Sequence[LabelEntry], datalist: Sequence[dict], modality: str,
                    target_spacing: Sequence[float], n_clicks: int, use_text: bool = True,
                    roi_size: Sequence[int] = (0, 0, 0), threshold: float = 0.5, ct_window=None,
                    max_window_factor: float = 1.5, info: Optional[dict] = None, progress: bool = False,
                    oracle: Optional[str] = None, mirror_axes: Sequence[int] = ()) -> dict:
    """Run the protocol on every case (the server's pre-processing, ``val_transforms``) -> the result dict;
    ``mirror_axes``: every answer averaged over these flips, as the server's ``--conf mirror_axes``."""
    from lib.training.data import val_transforms

    if n_clicks < 1:
        raise ValueError("n_clicks must be >= 1")
    parse_oracle(oracle)
    if oracle is not None and not use_text:
        raise ValueError("an oracle answers clicks on top of a text answer: it needs the text")
    xform = val_transforms(modality, target_spacing, with_label=True, ct_window=ct_window)
    names = [e.name for e in entries]
    cases, t0 = [], time.time()
    iterator: Any = datalist
    if progress:
        from tqdm import tqdm

        iterator = tqdm(datalist, desc=f"clicks ({'text + ' if use_text else ''}{n_clicks})", unit="case")
    model.eval()
    net = MirroredDecoding(model, mirror_axes) if mirror_axes else model
    for item in iterator:
        data = xform({"image": item["image"], "label": item["label"]})
        image = torch.as_tensor(data["image"]).float()[None]
        gt = label_map_to_binary(torch.as_tensor(data["label"]), entries).cpu()
        if roi_size and any(n > max_window_factor * r for n, r in zip(image.shape[-3:], roi_size) if r):
            raise ValueError(f"{item.get('id')}: volume {tuple(image.shape[-3:])} is much larger than the window "
                             f"{tuple(roi_size)}; click evaluation decodes whole volumes (hippocampus-sized data)")
        present = [bool(gt[i].any()) for i in range(len(entries))]
        run = interactive_case(net, image, gt, [e.prompt for e in entries], n_clicks, use_text, roi_size, threshold,
                               oracle=oracle)
        rec: dict[str, Any] = {"id": item.get("id") or Path(str(item["image"])).name, "labels": {}}
        for i, name in enumerate(names):
            if not use_text and not present[i]:  # nothing to click on: no prompt at all, not scored
                rec["labels"][name] = {"skipped": "absent from the ground truth (no text, no click)"}
                continue
            curve = [step[i] for step in run["dice"]]
            rec["labels"][name] = {"dice": curve, "clicks": [list(c) for c in run["clicks"][i]],
                                   **{f"noc{round(t * 100)}": noc(curve, t, run["first_click"], n_clicks)
                                      for t in NOC_THRESHOLDS}}
        cases.append(rec)
    result = {"info": dict(info or {}), "protocol": {"n_clicks": n_clicks, "text": use_text, "oracle": oracle,
                                                     "mirror_axes": sorted({int(a) for a in mirror_axes}),
                                                     "first_click": 0 if use_text else 1, "threshold": threshold},
              "labels": names, "num_cases": len(cases), "seconds": round(time.time() - t0, 2),
              **summarise_clicks(cases, names, n_clicks, use_text), "cases": cases}
    return _json_safe(result)


def summarise_clicks(cases: list[dict], names: Sequence[str], n_clicks: int, use_text: bool) -> dict:
    """Mean Dice per click count (``clicks`` axis) and mean NoC, per label and over labels."""
    first = 0 if use_text else 1
    axis = list(range(first, n_clicks + 1))
    per_label = {}
    for name in names:
        rows = [c["labels"][name] for c in cases if "dice" in c["labels"][name]]
        if not rows:
            continue
        per_label[name] = {"cases": len(rows), "dice_mean": [float(np.mean([r["dice"][j] for r in rows]))
                                                             for j in range(len(axis))],
                           **{f"noc{round(t * 100)}_mean": float(np.mean([r[f"noc{round(t * 100)}"] for r in rows]))
                              for t in NOC_THRESHOLDS}}
    mean = {"dice_mean": [float(np.mean([v["dice_mean"][j] for v in per_label.values()])) for j in range(len(axis))]
            if per_label else [],
            **{f"noc{round(t * 100)}_mean": float(np.mean([v[f"noc{round(t * 100)}_mean"] for v in per_label.values()]))
               if per_label else None for t in NOC_THRESHOLDS}}
    return {"clicks": axis, "per_label": per_label, "mean": mean}


def write_click_reports(result: dict, out_dir: str | os.PathLike, stem: str = "clicks", title: Optional[str] = None) -> dict:
    """``<stem>.json``, ``<stem>.csv`` (case, label, clicks, dice rows + NoC) and ``<stem>.png`` (Dice against clicks)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(result, indent=1))
    axis = result["clicks"]
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "label", "clicks", "dice", "noc85", "noc90"])
        for c in result["cases"]:
            for name, m in c["labels"].items():
                for n, d in zip(axis, m.get("dice", [])):
                    w.writerow([c["id"], name, n, f"{d:.4f}", m["noc85"], m["noc90"]])
        for name, s in result["per_label"].items():
            for n, d in zip(axis, s["dice_mean"]):
                w.writerow(["MEAN", name, n, f"{d:.4f}", f"{s['noc85_mean']:.3f}", f"{s['noc90_mean']:.3f}"])
    _plot_curve(result, paths["png"], title)
    return {k: str(v) for k, v in paths.items()}


def _plot_curve(result: dict, path: Path, title: Optional[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    axis = result["clicks"]
    for name, s in result["per_label"].items():
        ax.plot(axis, s["dice_mean"], marker="o", label=f"{name} (NoC@90 {s['noc90_mean']:.2f})")
    if result["mean"]["dice_mean"]:
        ax.plot(axis, result["mean"]["dice_mean"], marker="s", color="black", linewidth=2, label="mean")
    ax.set_xlabel("clicks" + (" (0 = text alone)" if result["protocol"]["text"] else " (no text)"))
    ax.set_ylabel("mean Dice")
    ax.set_xticks(axis)
    lo = min([min(s["dice_mean"]) for s in result["per_label"].values()] + [0.8])
    ax.set_ylim(max(0.0, math.floor(lo * 20) / 20 - 0.05), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "Dice against clicks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
