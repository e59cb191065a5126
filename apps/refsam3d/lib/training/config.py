"""Training options shared by the MONAI Label train task, the command line and the benchmark.

Every option has a plain-Python type so it can come from a REST request (viewers send strings,
numbers, booleans or lists), from ``--conf`` strings or from argparse.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from lib.defaults import DEFAULT_DEVICE, DEFAULT_LEARNING_RATE, DEFAULT_PRESET, DEFAULT_SW_OVERLAP
from lib.parsing import first, parse_axes, parse_bool, parse_labels, parse_names, parse_size, sizes_str  # noqa: F401

AUGMENTATION_PROFILES = ("paper", "nnunet", "flip")  # see training/data.py: augmentations()


@dataclass
class TrainConfig:
    """Options of one training run (units in the names; 0 means "no limit" for budgets)."""

    max_epochs: int = 50
    max_minutes: float = 0.0  # wall-clock budget for the whole run incl. validation; 0 = none
    max_iterations: int = 0  # 0 = none
    crop_size: tuple[int, ...] | None = None  # None -> label set's roi_size for the preset
    batch_size: int = 2  # volumes per iteration ...
    num_samples: int = 1  # ... times crops per volume (RandCropByPosNegLabeld) = crops per step
    pos_neg_ratio: float = 1.0  # foreground:background crop centres (paper: 1:1)
    learning_rate: float = DEFAULT_LEARNING_RATE[DEFAULT_PRESET]  # per preset: lib/defaults.py
    weight_decay: float = 1e-5
    warmup_fraction: float = 0.03  # linear warm-up over this fraction of the run, then linear decay to 0
    min_lr_fraction: float = 0.0
    grad_clip: float = 1.0  # max grad norm; 0 = off
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    max_prompts: int = 0  # prompts per step; 0 = every label of the set (present + absent)
    min_absent: int = 1  # at least this many absent labels per step when the set has any
    negative_prompts: list[str] = field(default_factory=list)  # prompts never present (empty targets); [] = vocabulary
    negative_prompts_per_step: int = 2  # absent prompts added to every step (0 = none, the behaviour before issue 25)
    negative_vocabulary: bool = True  # no negative_prompts given: draw them from lib/vocabulary.py
    prompt_variety: bool = True  # ask by name/synonym in templates too (false: always the canonical prompt)
    canonical_prompt_fraction: float = 0.3  # with prompt_variety: share of draws that use the canonical prompt
    typo_fraction: float = 0.1  # with prompt_variety: share of names/synonyms/absent names drawn with one typo
    labels: list[str] | None = None  # subset of label names to train (None = all)
    augment: bool = True
    augmentation: str = "paper"  # paper | nnunet (nnU-Net v2's default) | flip (mirroring only), see training/data.py
    flip_axes: tuple[int, ...] = (0,)  # RAS axis 0 = left-right (anatomically symmetric); 1/2 swap A-P / S-I
    val_split: float = 0.2
    val_interval: int = 1  # epochs between validations
    val_overlap: float = DEFAULT_SW_OVERLAP
    val_max_cases: int = 0  # 0 = all validation cases
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16)
    amp_cpu: bool = False  # bf16 autocast on the CPU (fast on CPUs with AMX / AVX512-BF16)
    device: str = DEFAULT_DEVICE
    threads: int = 0  # torch.set_num_threads; 0 = leave as is
    num_workers: int = 0  # 0 = augment in a background thread (ThreadDataLoader)
    cache_rate: float = 1.0
    log_interval_s: float = 10.0
    publish: str = "best"  # best (on validation improvement) | last (every epoch)
    validate_start: bool = True  # when fine-tuning a published model: its validation Dice is the bar to beat
    publish_unvalidated: bool = True  # with no validation study: publish anyway (said in the log and the stats)
    keep_versions: int = 5  # earlier published weights kept in model/versions/ (lib/weights_history.py)
    # simulated clicks (training/clicks.py): per (crop, prompt) a mode drawn with these weights, 1..rounds clicks
    clicks: bool = True
    click_text_only: float = 0.3
    click_text_and_clicks: float = 0.4
    click_only: float = 0.3  # no text: "segment what I clicked" (pairs with an empty target fall back to the others)
    click_max_rounds: int = 3

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """Build from a request/--conf mapping; unknown keys are ignored, list-valued viewer options use item 0."""
        cfg = dataclasses.replace(base) if base is not None else cls()
        aliases = {"lr": "learning_rate", "epochs": "max_epochs", "minutes": "max_minutes",
                   "train_batch_size": "batch_size", "roi_size": "crop_size"}
        for key, raw in values.items():
            name = aliases.get(key, key)
            if name not in {f.name for f in fields(cls)}:
                continue
            value = raw if name in ("labels", "negative_prompts", "crop_size", "flip_axes") else first(raw)
            if value is None:
                continue
            setattr(cfg, name, _coerce(cls, name, value))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.batch_size < 1 or self.num_samples < 1:
            raise ValueError("batch_size and num_samples must be >= 1")
        if not 0.0 <= self.val_split < 1.0:
            raise ValueError("val_split must be in [0, 1)")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if self.publish not in ("best", "last"):
            raise ValueError("publish must be 'best' or 'last'")
        if not 0.0 <= self.canonical_prompt_fraction <= 1.0 or self.negative_prompts_per_step < 0:
            raise ValueError("canonical_prompt_fraction must be in [0, 1] and negative_prompts_per_step >= 0")
        if not 0.0 <= self.typo_fraction <= 1.0:
            raise ValueError("typo_fraction must be in [0, 1]")
        if min(self.click_text_only, self.click_text_and_clicks, self.click_only) < 0 or self.click_max_rounds < 1:
            raise ValueError("click fractions must be >= 0 and click_max_rounds >= 1")
        if self.augmentation not in AUGMENTATION_PROFILES:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATION_PROFILES)}, "
                             f"got {self.augmentation!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def __str__(self) -> str:
        return json.dumps(self.to_dict())


def _coerce(cls, name: str, value: Any) -> Any:
    ftype = {f.name: f.type for f in fields(cls)}[name]
    if name == "crop_size":
        return parse_size(value)
    if name == "labels":
        return parse_labels(value)
    if name == "negative_prompts":
        return parse_names(value)
    if name == "flip_axes":
        return parse_axes(value)
    if ftype in ("bool", bool):
        return parse_bool(value)
    if ftype in ("int", int):
        return int(float(value))
    if ftype in ("float", float):
        return float(value)
    return str(value)

