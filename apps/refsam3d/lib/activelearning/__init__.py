"""Active learning for RefSAM3D: next-sample strategies and scoring methods.

Strategies: ``random`` and ``first`` (MONAI Label's), ``uncertainty`` (highest model uncertainty first).
Scoring: ``dice`` (original vs final label, per label) and ``uncertainty`` (computes the scores the
``uncertainty`` strategy ranks by; MONAI Label runs scoring in the background after start-up,
training and each next-sample request, and the scores are cached in the datastore).
"""

from __future__ import annotations

from monailabel.tasks.activelearning.first import First

from .dice import LabelDiceScoring, label_map_dice
from .random_pick import SafeRandom
from .uncertainty import UncertaintyScoring, UncertaintyStrategy, flip_disagreement, mask_entropy, model_version


def build_strategies(task_config) -> dict:
    return {"random": SafeRandom(), "first": First(), "uncertainty": UncertaintyStrategy(task_config)}


def build_scoring_methods(task_config) -> dict:
    return {"dice": LabelDiceScoring(task_config.label_set), "uncertainty": UncertaintyScoring(task_config)}


__all__ = [
    "LabelDiceScoring", "SafeRandom", "UncertaintyScoring", "UncertaintyStrategy", "build_scoring_methods",
    "build_strategies", "flip_disagreement", "label_map_dice", "mask_entropy", "model_version",
]
