"""Scoring ``dice``: how much annotators changed the model's mask -- Dice(original, final) per label."""

from __future__ import annotations

import logging

import numpy as np
import torch
from monai.transforms import LoadImage

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod

logger = logging.getLogger(__name__)


def label_map_dice(y_pred: np.ndarray, y: np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """Dice per label of two label maps (MONAI's, via :func:`lib.evaluation.dice_where_present`); labels absent
    from both are left out."""
    from lib.evaluation import dice_where_present

    wanted = {name: int(index) for name, index in labels.items() if int(index) != 0}
    if not wanted:
        return {}
    dice = dice_where_present(y_pred, y, num_classes=max(wanted.values()) + 1)
    return {name: dice[index] for name, index in wanted.items() if dice[index] is not None}


class LabelDiceScoring(ScoringMethod):
    """For every study with both an ``original`` (model) and a ``final`` (annotator) label, store
    ``dice`` (mean over labels) and ``dice_per_label`` in the image info."""

    def __init__(self, label_set):
        super().__init__("Dice between the model's original mask and the annotator's final label, per label")
        self.labels = {n: int(i) for n, i in dict(label_set.labels).items()}

    def __call__(self, request, datastore: Datastore):
        loader = LoadImage(image_only=True)
        tag_y = request.get("y", DefaultLabelTag.FINAL)
        tag_y_pred = request.get("y_pred", DefaultLabelTag.ORIGINAL)
        result = {}
        for image_id in datastore.list_images():
            y_id = datastore.get_label_by_image_id(image_id, tag_y)
            p_id = datastore.get_label_by_image_id(image_id, tag_y_pred)
            if not y_id or not p_id:
                continue
            try:
                y = loader(datastore.get_label_uri(y_id, tag_y))
                p = loader(datastore.get_label_uri(p_id, tag_y_pred))
            except Exception as exc:
                logger.warning(f"dice: labels of {image_id} could not be read: {exc}")
                continue
            y = (y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)).squeeze().round().astype(np.int32)
            p = (p.numpy() if isinstance(p, torch.Tensor) else np.asarray(p)).squeeze().round().astype(np.int32)
            if y.shape != p.shape:
                logger.warning(f"dice: {image_id}: original {p.shape} and final {y.shape} labels differ in shape")
                continue
            per_label = label_map_dice(p, y, self.labels)
            if per_label:
                mean = float(np.mean(list(per_label.values())))
            else:  # both empty: the annotator kept an empty mask
                mean = 1.0
            datastore.update_image_info(image_id, {"dice": mean, "dice_per_label": per_label})
            result[image_id] = {"dice": mean, "per_label": per_label}
            logger.info(f"dice: {image_id} original vs final: {mean:.4f} {per_label}")
        return result
