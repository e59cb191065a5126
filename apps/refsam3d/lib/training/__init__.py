"""Training engine shared by the MONAI Label train task, ``scripts/train.py`` and the benchmark.

Nothing here imports MONAI Label, so the command line trains without a server.
"""

from .adapters import EnsembleSegmenter, PromptModelAdapter, SegmentationAdapter, resolve_device
from .config import TrainConfig, parse_bool, parse_labels, parse_size
from .data import (
    apply_split,
    msd_datalist,
    save_split,
    split_datalist,
    train_transforms,
    val_transforms,
)
from .engine import LinearSchedule, run_training, validate
from .losses import PromptDiceCELoss
from .prompts import LabelEntry, entries_from_dict, entries_from_label_set, label_map_to_binary, sample_prompts

__all__ = [
    "EnsembleSegmenter", "LabelEntry", "LinearSchedule", "PromptDiceCELoss", "PromptModelAdapter",
    "SegmentationAdapter", "TrainConfig",
    "apply_split", "entries_from_dict", "entries_from_label_set", "label_map_to_binary", "msd_datalist",
    "parse_bool", "parse_labels", "parse_size", "resolve_device", "run_training", "sample_prompts", "save_split",
    "split_datalist", "train_transforms", "val_transforms", "validate",
]
