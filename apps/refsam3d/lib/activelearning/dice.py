"""Scoring ``dice``: how much annotators changed the model's mask -- Dice(original, final) per label."""

from __future__ import annotations

import logging

import numpy as np
import torch
from monai.transforms import LoadImage
from scipy.ndimage import find_objects

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod

logger = logging.getLogger(__name__)


def label_map_dice(y_pred: np.ndarray, y: np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """Dice per label of two label maps (labels absent from both are left out).

    MONAI's Dice (:func:`lib.evaluation.dice_where_present`) inside the box holding the label in either map
    (scipy's ``find_objects``, one pass per map): a whole-body map of 100+ labels costs a few passes, not one
    full-volume comparison per label."""
    from lib.evaluation import dice_where_present

    wanted = {name: int(index) for name, index in labels.items() if int(index) > 0}
    if not wanted:
        return {}
    top = max(wanted.values())
    boxes_pred, boxes_y = find_objects(y_pred, max_label=top), find_objects(y, max_label=top)
    out = {}
    for name, index in wanted.items():
        a, b = boxes_pred[index - 1], boxes_y[index - 1]
        if a is None and b is None:
            continue
        box = a if b is None else b if a is None else tuple(slice(min(s.start, t.start), max(s.stop, t.stop))
                                                            for s, t in zip(a, b))
        dice = dice_where_present(torch.as_tensor(y_pred[box] == index)[None], torch.as_tensor(y[box] == index)[None])
        out[name] = dice[0]
    return out


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
