"""Evaluation of a segmentation model on labelled volumes: Dice, NSD and HD95 per case and per label.

Metrics are MONAI's (``DiceMetric``, ``SurfaceDiceMetric``, ``HausdorffDistanceMetric(percentile=95)``),
computed on the whole volume after the same pre-processing as inference (``lib.transforms``), with
the prediction made by sliding window over the full volume (never a crop derived from the ground truth).
Results are written as JSON, CSV and a PNG plot.

Conventions for degenerate cases (per label and case):
- label absent in both prediction and ground truth: Dice 1, NSD 1, HD95 0 (a correct "not here");
- label present in only one of them: Dice 0, NSD 0, HD95 undefined (``NaN``, counted in ``hd95_undefined``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric, compute_dice

logger = logging.getLogger(__name__)

METRICS = ("dice", "nsd", "hd95")


# ----------------------------------------------------------------------------------------------- metrics
def _as_batch(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    t = t.detach().to("cpu")
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"expected masks [K, D, H, W] (or [D, H, W]), got {tuple(t.shape)}")
    return (t > 0.5 if t.is_floating_point() else t.bool()).float()[None]  # [1, K, D, H, W]


def case_metrics(pred, gt, spacing: Sequence[float] = (1.0, 1.0, 1.0), nsd_tolerance: float = 1.0,
                 metrics: Sequence[str] = METRICS) -> dict[str, list[float]]:
    """Per-label metrics of one case.

    Args:
        pred, gt: binary masks ``[K, D, H, W]`` (channel k = label k), tensors or arrays.
        spacing: voxel size in mm (distances are in mm).
        nsd_tolerance: NSD boundary tolerance in mm.
    Returns:
        ``{"dice": [K floats], "nsd": [...], "hd95": [...]}`` (HD95 in mm, NaN when undefined).
    """
    y_pred, y = _as_batch(pred), _as_batch(gt)
    if y_pred.shape != y.shape:
        raise ValueError(f"prediction {tuple(y_pred.shape)} and ground truth {tuple(y.shape)} differ")
    k = y.shape[1]
    spacing = [float(s) for s in spacing]
    pred_any = y_pred.flatten(2).sum(-1)[0] > 0
    gt_any = y.flatten(2).sum(-1)[0] > 0
    both_empty = (~pred_any) & (~gt_any)
    one_empty = pred_any ^ gt_any
    out: dict[str, list[float]] = {}
    with warnings.catch_warnings():  # MONAI warns about empty masks, handled below
        warnings.simplefilter("ignore")
        _compute(out, y_pred, y, k, spacing, nsd_tolerance, metrics, both_empty, one_empty)
    return out


def _compute(out, y_pred, y, k, spacing, nsd_tolerance, metrics, both_empty, one_empty) -> None:
    if "dice" in metrics:
        dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(y_pred, y)[0]
        out["dice"] = [float(v) for v in dice]
    if "nsd" in metrics:
        nsd_metric = SurfaceDiceMetric(class_thresholds=[float(nsd_tolerance)] * k, include_background=True,
                                       reduction="none")
        nsd = nsd_metric(y_pred, y, spacing=spacing)[0]
        out["nsd"] = [1.0 if bool(both_empty[i]) else (0.0 if bool(one_empty[i]) else float(nsd[i]))
                      for i in range(k)]
    if "hd95" in metrics:
        hd_metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
        hd = hd_metric(y_pred, y, spacing=spacing)[0]
        vals = []
        for i in range(k):
            if bool(both_empty[i]):
                vals.append(0.0)
            elif bool(one_empty[i]) or not math.isfinite(float(hd[i])):
                vals.append(float("nan"))
            else:
                vals.append(float(hd[i]))
        out["hd95"] = vals


def dice_per_label(pred, gt) -> list[float]:
    return case_metrics(pred, gt, metrics=("dice",))["dice"]


def dice_where_present(y_pred, y) -> list[float | None]:
    """MONAI's Dice per channel of two bool mask sets ``[K, *spatial]``, ``None`` for a label absent from both
    (callers that average what is there leave it out; :func:`case_metrics` scores it 1)."""
    p, g = torch.as_tensor(y_pred).bool(), torch.as_tensor(y).bool()
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} differ")
    present = p.flatten(1).any(-1) | g.flatten(1).any(-1)
    dice = compute_dice(p[None], g[None], include_background=True, ignore_empty=False)[0]
    return [float(d) if bool(ok) else None for d, ok in zip(dice, present)]


def probs_to_masks(probs: torch.Tensor, threshold: float = 0.5, exclusive: bool = True) -> torch.Tensor:
    """``[K, *spatial]`` (or ``[1, K, ...]``) per-prompt probabilities -> ``[K, *spatial]`` bool masks.

    ``exclusive`` gives each voxel to the most probable prompt above ``threshold`` -- the rule that
    turns the outputs into one label map, as the server does; otherwise every channel is thresholded alone.
    """
    if probs.dim() == 5:
        probs = probs[0]
    if not exclusive or probs.shape[0] == 1:
        return probs >= threshold
    best = probs.argmax(dim=0)
    fg = probs.max(dim=0).values >= threshold  # same rule as lib.inference.segment_prompts
    return torch.stack([(best == i) & fg for i in range(probs.shape[0])], dim=0)


# ----------------------------------------------------------------------------------------------- aggregation
def keep_largest(masks: torch.Tensor) -> torch.Tensor:
    """``[K, D, H, W]`` bool -> the same with only the largest connected component of every channel."""
    from monai.transforms import KeepLargestConnectedComponent

    keep = KeepLargestConnectedComponent(applied_labels=list(range(masks.shape[0])), is_onehot=True, independent=True)
    return torch.as_tensor(keep(masks.to(torch.uint8))).bool()


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _mean(values: Sequence[float]) -> float | None:
    vals = _finite(values)
    return float(np.mean(vals)) if vals else None


def _std(values: Sequence[float]) -> float | None:
    vals = _finite(values)
    return float(np.std(vals)) if vals else None


def summarise(cases: list[dict], label_names: Sequence[str]) -> dict:
    per_label: dict[str, dict] = {}
    for name in label_names:
        entry: dict[str, Any] = {}
        for m in METRICS:
            vals = [c["labels"][name][m] for c in cases if name in c["labels"] and m in c["labels"][name]]
            if not vals:
                continue
            entry[f"{m}_mean"] = _mean(vals)
            entry[f"{m}_std"] = _std(vals)
            entry[f"{m}_median"] = float(np.median(_finite(vals))) if _finite(vals) else None
            if m == "hd95":
                entry["hd95_undefined"] = int(sum(1 for v in vals if v is None or not math.isfinite(v)))
        per_label[name] = entry
    mean = {}
    for m in METRICS:
        vals = [per_label[n].get(f"{m}_mean") for n in label_names if per_label[n].get(f"{m}_mean") is not None]
        if vals:
            mean[m] = float(np.mean(vals))
    return {"per_label": per_label, "mean": mean}


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


# ----------------------------------------------------------------------------------------------- runner
class Segmenter(Protocol):
    def segment(self, image: torch.Tensor) -> torch.Tensor:  # [1,1,D,H,W] -> [K,D,H,W] bool (label order)
        ...


def evaluate(
    segmenter: Segmenter,
    datalist: Sequence[dict],
    label_names: Sequence[str],
    label_indices: Sequence[int],
    modality: str,
    target_spacing: Sequence[float],
    nsd_tolerance: float = 1.0,
    cross_prompts: bool = False,
    progress: bool = False,
    description: str = "evaluate",
    info: dict | None = None,
    log_every_s: float = 30.0,
    ct_window: Sequence[float] | None = None,
    largest_component: bool = False,
) -> dict:
    """Run ``segmenter`` on every case and compute the metrics.

    ``largest_component``: keep only the largest connected piece of each label's mask (MONAI's
    ``KeepLargestConnectedComponent``, nnU-Net's post-processing) before scoring.

    ``segmenter.segment(image)`` returns ``[K, *spatial]`` masks in ``label_names`` order. With
    ``cross_prompts`` and a ``segmenter.segment_each(image)`` method (every prompt thresholded on
    its own), the "routing" matrix ``dice(prompt i, label j)`` is also computed: its off-diagonal is
    the Dice of a swapped prompt against the other structure, which must be ~0 if the text routes.
    """
    from lib.training.data import val_transforms
    from lib.training.prompts import LabelEntry, label_map_to_binary

    entries = [LabelEntry(n, int(i), n) for n, i in zip(label_names, label_indices)]
    xform = val_transforms(modality, target_spacing, with_label=True, ct_window=ct_window)
    cases = []
    routing_sum = np.zeros((len(entries), len(entries)))
    routing_n = 0
    iterator: Any = datalist
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(datalist, desc=description, unit="case")
        iterator = bar
    t0 = last_log = time.time()
    for n_done, item in enumerate(iterator):
        data = xform({"image": item["image"], "label": item["label"]})
        image = torch.as_tensor(data["image"]).float()[None]
        gt = label_map_to_binary(torch.as_tensor(data["label"]), entries)
        routing = cross_prompts and hasattr(segmenter, "segment_each") and len(entries) > 1
        pred, each = _predict(segmenter, image, routing)
        if largest_component:
            pred = keep_largest(pred)
        m = case_metrics(pred, gt, spacing=target_spacing, nsd_tolerance=nsd_tolerance)
        rec = {"id": item.get("id") or Path(item["image"]).name, "image": str(item["image"]),
               "labels": {n: {k: m[k][i] for k in m} for i, n in enumerate(label_names)}}
        rec["labels_present"] = [n for i, n in enumerate(label_names) if bool(gt[i].any())]
        if routing:
            mat = _routing_dice(each, gt)
            routing_sum += mat
            routing_n += 1
            rec["routing_dice"] = mat.tolist()
        cases.append(rec)
        if bar is not None:
            bar.set_postfix(dice=f"{np.mean(m['dice']):.3f}")
        elif time.time() - last_log > log_every_s:
            last_log = time.time()
            logger.info(f"{description}: {n_done + 1}/{len(datalist)} cases, {(n_done + 1) / (last_log - t0):.2f} cases/s")
    if bar is not None:
        bar.close()
    result = {
        "info": dict(info or {}),
        "largest_component": bool(largest_component),
        "labels": list(label_names),
        "nsd_tolerance_mm": float(nsd_tolerance),
        "spacing_mm": [float(s) for s in target_spacing],
        "num_cases": len(cases),
        "seconds": round(time.time() - t0, 2),
        **summarise(cases, label_names),
        "cases": cases,
    }
    if routing_n:
        result["routing"] = _routing_summary(routing_sum / routing_n, label_names)
    return _json_safe(result)


def _predict(segmenter: Segmenter, image: torch.Tensor, routing: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``image [1, 1, *spatial]`` -> the label masks ``[K, *spatial]`` and, with ``routing``, every prompt's mask
    thresholded on its own (else None); bool, on the CPU."""
    each = None
    with torch.no_grad():
        if routing and hasattr(segmenter, "segment_and_each"):  # one inference for both
            pred, each = segmenter.segment_and_each(image)
        else:
            pred = segmenter.segment(image)
        if routing and each is None:
            each = segmenter.segment_each(image)
    return pred.to("cpu").bool(), (each.to("cpu").bool() if each is not None else None)


def _routing_dice(each: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """``[K, K]``: Dice of prompt i's own mask (``each [K, *spatial]``) against label j's ground truth."""
    k = each.shape[0]
    mat = np.zeros((k, k))
    for i in range(k):
        mat[i] = case_metrics(each[i:i + 1].expand(k, *each.shape[1:]), gt, metrics=("dice",))["dice"]
    return mat


def _routing_summary(mat: np.ndarray, label_names: Sequence[str]) -> dict:
    """The mean routing matrix over cases and its off-diagonal (swapped-prompt) Dice."""
    k = len(label_names)
    off = [mat[i, j] for i in range(k) for j in range(k) if i != j]
    return {
        "description": "mean Dice of the mask from prompt i (row) against the ground truth of label j (column); "
                       "each prompt thresholded on its own",
        "prompts": list(label_names),
        "dice_matrix": mat.tolist(),
        "swapped_dice_mean": float(np.mean(off)),
        "swapped_dice_max": float(np.max(off)),
    }


def write_reports(result: dict, out_dir: str | os.PathLike, stem: str = "evaluation", title: str | None = None) -> dict:
    """Write ``<stem>.json``, ``<stem>.csv`` (one row per case and label) and ``<stem>.png``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(_json_safe(result), indent=1))
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "label", "dice", "nsd", "hd95_mm", "present_in_ground_truth"])
        for c in result["cases"]:
            for name, m in c["labels"].items():
                w.writerow([c["id"], name, _fmt(m.get("dice")), _fmt(m.get("nsd")), _fmt(m.get("hd95")),
                            int(name in c.get("labels_present", []))])
        for name, s in result["per_label"].items():
            w.writerow(["MEAN", name, _fmt(s.get("dice_mean")), _fmt(s.get("nsd_mean")), _fmt(s.get("hd95_mean")), ""])
    plot_results({stem: result}, paths["png"], title=title)
    return {k: str(v) for k, v in paths.items()}


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def plot_results(results: dict[str, dict], path: str | os.PathLike, title: str | None = None) -> None:
    """Box plots of Dice, NSD and HD95 per label; one box per (model, label) when several results are given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    for ax, metric, ylabel in zip(axes, METRICS, ("Dice", "NSD", "HD95 (mm)")):
        data, labels = [], []
        for model_name, res in results.items():
            for label in res["labels"]:
                vals = _finite([c["labels"][label].get(metric) for c in res["cases"]
                                if c["labels"][label].get(metric) is not None])
                data.append(vals if vals else [float("nan")])
                labels.append(f"{model_name}\n{label}" if len(results) > 1 else label)
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        if metric != "hd95":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or "Evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
