"""Uncertainty of the current model on unlabeled studies: computed in the background, cached, ranked.

``UncertaintyScoring`` (scoring method ``uncertainty``) runs the current model on unlabeled studies
twice -- as is and mirrored left-right (test-time flip) -- with every prompt of the label set, and
stores in the datastore's image info::

    uncertainty              0..1, the ranking score = (mean mask entropy + flip disagreement) / 2
    uncertainty_entropy      mean binary entropy (bits) of the predicted masks over the voxels any
                             prompt claims (p > 0.1 in either pass); 1 when the model finds nothing
    uncertainty_disagreement 1 - mean Dice between the masks of the two passes (per label)
    uncertainty_model        version of the model that produced the score (published file mtime)
    uncertainty_ts           when it was computed

Studies already scored by the same model version are skipped, so repeated runs are cheap; each run
scores at most ``max_samples`` studies (request key or ``--conf al_max_samples``, ``AppSettings``).

``UncertaintyStrategy`` (strategy ``uncertainty``) serves the unlabeled study with the highest
score, preferring studies not served to anyone in the last ``reset`` seconds; studies without any
score come after scored ones (in name order), so it always returns a study while scores are missing.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)

KEY = "uncertainty"
KEY_MODEL = "uncertainty_model"


def model_version(task_config) -> str:
    """Identifies the weights the server serves: mtime of the published file, else ``base``."""
    try:
        path = Path(task_config.store.published_path)
        if path.exists():
            return str(path.stat().st_mtime_ns)
    except Exception:  # pragma: no cover - store without a published path
        pass
    return "base"


def mask_entropy(probs: torch.Tensor, region: torch.Tensor) -> float:
    """Mean binary entropy (bits) of ``probs [K, *spatial]`` over the voxels of ``region [*spatial]``."""
    if not bool(region.any()):
        return 1.0
    p = probs[:, region].clamp(1e-6, 1 - 1e-6)
    h = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))
    return float(h.mean())


def flip_disagreement(masks_a: torch.Tensor, masks_b: torch.Tensor) -> float:
    """1 - mean Dice (MONAI's) between two ``[K, *spatial]`` bool mask sets (labels empty in both are skipped)."""
    from lib.evaluation import dice_where_present

    dices = [d for d in dice_where_present(masks_a, masks_b) if d is not None]
    return 1.0 - float(np.mean(dices)) if dices else 0.0


class UncertaintyScoring(ScoringMethod):
    def __init__(self, task_config, max_samples: int | None = None, flip_axis: int = 0):
        super().__init__("Rank unlabeled studies by the model's uncertainty (mask entropy + test-time flip)")
        self.task_config = task_config
        self.max_samples = int(max_samples if max_samples is not None else task_config.settings.al_max_samples)
        self.flip_axis = int(flip_axis)

    def _model_and_settings(self):
        settings = self.task_config.settings  # lib/settings.py: AppSettings
        model, _version = self.task_config.store.get()
        return model, tuple(int(r) for r in settings.roi_size), settings.sw_overlap_fraction

    def score_image(self, image_path: str, model, roi, overlap) -> dict[str, float]:
        from lib.evaluation import probs_to_masks
        from lib.inference import mirrored_predictions, sliding_window_segment
        from lib.training.data import val_transforms

        settings = self.task_config.settings
        ls = settings.label_set
        data = val_transforms(settings.modality, settings.target_spacing, with_label=False,
                              ct_window=settings.ct_window)({"image": image_path})
        image = torch.as_tensor(data["image"]).float()[None]
        prompts = [ls.prompts.get(n) or n for n in ls.labels]
        device = next(model.parameters()).device

        def predict(x: torch.Tensor) -> torch.Tensor:
            return sliding_window_segment(model, x, prompts, roi, overlap=overlap, device=device).float().cpu()

        with torch.no_grad():  # the plain pass, then the one mirrored along flip_axis (flipped back)
            probs, flipped = (p[0] for p in mirrored_predictions(predict, image, (self.flip_axis,)))
        region = (probs.max(0).values > 0.1) | (flipped.max(0).values > 0.1)
        entropy = mask_entropy((probs + flipped) / 2, region)
        disagreement = flip_disagreement(probs_to_masks(probs), probs_to_masks(flipped))
        return {"entropy": entropy, "disagreement": disagreement, "score": 0.5 * (entropy + disagreement)}

    def __call__(self, request, datastore: Datastore):
        version = model_version(self.task_config)
        force = bool(request.get("force", False))
        max_samples = int(request.get("max_samples", self.max_samples) or 0)
        unlabeled = sorted(datastore.get_unlabeled_images())
        todo = []
        for image_id in unlabeled:
            info = datastore.get_image_info(image_id) or {}
            if not force and str(info.get(KEY_MODEL)) == version:
                continue
            todo.append(image_id)
        skipped = len(unlabeled) - len(todo)
        if max_samples > 0:
            todo = todo[:max_samples]
        summary: dict[str, Any] = {"total": len(unlabeled), "skipped": skipped, "executed": 0, "model": version,
                                   "scores": {}}
        if not todo:
            return summary
        t0 = time.time()
        model, roi, overlap = self._model_and_settings()
        was_training = model.training
        model.eval()
        try:
            for image_id in todo:
                try:
                    s = self.score_image(datastore.get_image_uri(image_id), model, roi, overlap)
                except Exception as exc:  # one bad study must not stop the ranking of the others
                    logger.warning(f"uncertainty: {image_id} could not be scored: {exc}")
                    continue
                datastore.update_image_info(image_id, {
                    KEY: s["score"], "uncertainty_entropy": s["entropy"],
                    "uncertainty_disagreement": s["disagreement"], KEY_MODEL: version, "uncertainty_ts": int(time.time()),
                })
                summary["scores"][image_id] = round(s["score"], 5)
                summary["executed"] += 1
                logger.info(f"uncertainty: {image_id} score {s['score']:.4f} (entropy {s['entropy']:.4f}, "
                            f"flip disagreement {s['disagreement']:.4f})")
        finally:
            model.train(was_training)
        summary["latency"] = round(time.time() - t0, 3)
        logger.info(f"uncertainty scoring: {summary['executed']} scored, {skipped} up to date, "
                    f"{summary['latency']}s")
        return summary


class UncertaintyStrategy(Strategy):
    def __init__(self, task_config=None, reset: int = 3600):
        super().__init__("Most uncertain unlabeled study first (scores from the 'uncertainty' scoring method)")
        self.task_config = task_config
        self.reset = int(reset)

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        strategy = request.get("strategy", KEY)
        version = model_version(self.task_config) if self.task_config is not None else None
        now = int(time.time())
        ranked = []
        for image_id in sorted(images):
            info = datastore.get_image_info(image_id) or {}
            score = info.get(KEY)
            current = version is not None and str(info.get(KEY_MODEL)) == version
            served = info.get("strategy", {}).get(strategy, {}).get("ts", 0)
            recently_served = now - int(served or 0) < self.reset
            has_score = isinstance(score, (int, float)) and math.isfinite(score)
            # sort key: not recently served, current-model score, any score, higher score, name
            ranked.append(((recently_served, not current, not has_score, -(score if has_score else 0.0), image_id),
                           image_id, score if has_score else None, current))
        ranked.sort(key=lambda r: r[0])
        _, image_id, score, current = ranked[0]
        logger.info(f"uncertainty: selected {image_id} (score {score}, current model: {current}; "
                    f"{sum(1 for r in ranked if r[2] is not None)}/{len(ranked)} scored)")
        return {"id": image_id, KEY: score, "scored_by_current_model": current}
