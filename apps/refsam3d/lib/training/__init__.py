"""Training engine shared by the MONAI Label train task, ``scripts/train.py`` and the benchmark.

Nothing here imports MONAI Label, so the command line trains without a server. Names are imported
lazily (PEP 562): ``lib.training.config`` stays plain Python, so command-line ``--help`` and option
lists need neither torch nor MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    ".adapters": ("EnsembleSegmenter", "PromptModelAdapter", "SegmentationAdapter", "resolve_device",
                  "trainable_parameters"),
    ".config": ("AUGMENTATION_PROFILES", "TrainConfig", "parse_bool", "parse_labels", "parse_size"),
    ".data": ("apply_split", "msd_datalist", "save_split", "split_datalist", "train_transforms", "val_transforms"),
    ".engine": ("TrainData", "TrainOutput", "TrainRecipe", "run_training"),
    ".step": ("ForwardLoss", "LinearSchedule", "TrainStep"),
    ".validation": ("validate",),
    ".inferer": ("PromptSlidingWindowInferer",),
    ".losses": ("PromptDiceCELoss", "prompt_loss"),
    ".prompts": ("LabelEntry", "entries_from_dict", "entries_from_label_set", "label_map_to_binary", "sample_prompts"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value  # import once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
