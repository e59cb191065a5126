"""The app's settings: every ``--conf`` key parsed once, at start-up, into one typed object.

``AppSettings.from_conf(conf, app_dir)`` is called by ``main.py``; the task config, the infer, train and
active-learning code read its fields (never the raw ``conf``).  Defaults are the fields' defaults (shared ones
from ``lib/defaults.py``); values derived from the label set (modality, spacing, ROI, CT window) are resolved
here.  A bad value raises ``ConfError`` naming the key and what is allowed.  ``conf_table()`` lists the keys
with their defaults as docs/app.md shows them (a test checks the two agree).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

from lib.defaults import (DEFAULT_DEVICE, DEFAULT_LABEL_SET, DEFAULT_LEARNING_RATE, DEFAULT_MIN_SIMILARITY,
                          DEFAULT_PRESET, DEFAULT_SW_OVERLAP, DEFAULT_TEXT_ENCODER, PRECISIONS, PRESETS)
from lib.labelsets import LabelSet, load_label_set
from lib.parsing import (is_unset, parse_bool, parse_choice, parse_mirror_axes, parse_modality, parse_number,
                         parse_size)
from lib.server.settings import ServerLimits
from lib.training.config import TrainConfig

TRAIN_PREFIX = "train_"  # --conf train_<option> VALUE: the train task's default for <option> (TrainConfig)


class ConfError(ValueError):
    """A ``--conf`` value that cannot be used (the message names the key and what is allowed)."""


def _conf(default: Any, shown: Optional[str] = None, key: Optional[str] = None):
    """A field read from ``--conf`` (``key``: its name there, default the field's name); ``shown``: the default
    as docs/app.md writes it."""
    return field(default=default, metadata={"conf": True, "shown": shown, "key": key})


@dataclass(frozen=True)
class AppSettings:
    """Everything ``--conf`` sets (see docs/app.md, "--conf keys")."""

    preset: str = _conf(DEFAULT_PRESET)
    label_set: Optional[LabelSet] = _conf(None, shown=DEFAULT_LABEL_SET)
    use_pretrained_model: bool = _conf(True)
    sam_checkpoint: Optional[str] = _conf(None, shown="model/sam_vit_b_01ec64.pth")
    sam_url: Optional[str] = _conf(None, shown="official address")
    text_encoder: str = _conf(DEFAULT_TEXT_ENCODER)
    target_spacing: Tuple[float, float, float] = _conf((), shown="label set")
    roi_size: Tuple[int, int, int] = _conf((), shown="label set")
    sw_overlap: Union[str, float] = _conf("auto")  # "auto" or MONAI's overlap fraction
    sw_batch_size: int = _conf(1)
    modality: str = _conf("", shown="label set")
    device: str = _conf(DEFAULT_DEVICE)
    precision: str = _conf("auto")
    mirror_axes: Union[str, Tuple[int, ...]] = _conf("auto")  # "auto": the served weights' training flips (nnU-Net)
    cache_size_mb: float = _conf(2048.0)
    max_prompt_chars: int = _conf(500)
    min_prompt_similarity: float = _conf(DEFAULT_MIN_SIMILARITY)
    strict_prompts: bool = _conf(False)
    limits: ServerLimits = field(default_factory=ServerLimits)  # max_concurrent_infers, ..., max_voxels
    preload: bool = _conf(True)
    model_dir: str = _conf("", shown="<repository>/model")
    skip_trainers: bool = _conf(False)
    skip_strategies: bool = _conf(False)
    skip_scoring: bool = _conf(True)
    random_strategy: Optional[str] = _conf(None, shown="random")
    dicomweb_search_filter: Optional[str] = _conf(None, shown="the label set's modality")
    al_max_samples: int = _conf(20)  # studies the uncertainty scoring scores per run
    train: TrainConfig = field(default_factory=TrainConfig)  # train_<option> keys; train_keep_versions among them

    # ------------------------------------------------------------------ derived values
    @property
    def sw_overlap_fraction(self) -> float:
        """A number for callers that need one (validation, active learning): ``auto`` -> MONAI's usual 0.25."""
        return DEFAULT_SW_OVERLAP if self.sw_overlap == "auto" else float(self.sw_overlap)

    @property
    def ct_window(self) -> Optional[Tuple[float, float]]:
        """The HU window of the pre-processing (CT only)."""
        return tuple(self.label_set.ct_window) if self.modality == "CT" and self.label_set else None

    @property
    def keep_versions(self) -> int:
        """Earlier published weights kept (``--conf train_keep_versions``)."""
        return self.train.keep_versions

    def served_mirror_axes(self, trained_flips: Tuple[int, ...]) -> Tuple[int, ...]:
        """The flips the text path averages for weights trained with ``trained_flips``: those (``auto``) or the set ones."""
        return tuple(trained_flips) if self.mirror_axes == "auto" else tuple(self.mirror_axes)

    def roi_for(self, preset: str) -> Tuple[int, ...]:
        """The sliding-window ROI of ``preset``: ``roi_size`` for the served preset, else the label set's."""
        return tuple(self.roi_size) if preset == self.preset else tuple(self.label_set.roi_size(preset))

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_conf(cls, conf: Mapping[str, Any], app_dir: Optional[str] = None) -> "AppSettings":
        """Parse ``conf`` (``--conf`` strings; typed values accepted too); ``ConfError`` for a bad value."""
        c, d = _Reader(conf), {f.name: f.default for f in fields(cls)}  # d: the defaults above, nowhere else
        preset = c.get("preset", d["preset"], parse_choice, PRESETS)
        try:
            label_set = load_label_set(c.raw("label_set") or DEFAULT_LABEL_SET)
        except ValueError as e:
            raise ConfError(f"--conf label_set: {e}") from None
        overlap = c.raw("sw_overlap")
        auto = overlap is None or str(overlap).strip().lower() == "auto"
        model_dir = c.raw("model_dir") or (default_model_dir(app_dir) if app_dir else os.path.realpath("model"))
        return cls(
            preset=preset,
            label_set=label_set,
            use_pretrained_model=c.get("use_pretrained_model", d["use_pretrained_model"], parse_bool),
            sam_checkpoint=c.raw("sam_checkpoint"),
            sam_url=c.raw("sam_url"),
            text_encoder=str(c.raw("text_encoder") or d["text_encoder"]),
            target_spacing=c.get("target_spacing", None, parse_size, 3, float) or tuple(label_set.target_spacing),
            roi_size=c.get("roi_size", None, parse_size, 3, int) or tuple(label_set.roi_size(preset)),
            sw_overlap=d["sw_overlap"] if auto else c.get("sw_overlap", None, parse_number, 0.0, 0.9),
            sw_batch_size=c.get("sw_batch_size", d["sw_batch_size"], parse_number, 1, 64, int),
            modality=c.get("modality", label_set.modality, parse_modality),
            device=str(c.raw("device") or d["device"]).lower(),
            precision=c.get("precision", d["precision"], parse_choice, PRECISIONS),
            mirror_axes=c.get("mirror_axes", d["mirror_axes"], parse_mirror_axes),
            cache_size_mb=c.get("cache_size_mb", d["cache_size_mb"], parse_number, 0, 1 << 22),
            max_prompt_chars=c.get("max_prompt_chars", d["max_prompt_chars"], parse_number, 1, 100000, int),
            min_prompt_similarity=c.get("min_prompt_similarity", d["min_prompt_similarity"], parse_number, -1.0, 1.0),
            strict_prompts=c.get("strict_prompts", d["strict_prompts"], parse_bool),
            limits=_limits(c),
            preload=c.get("preload", d["preload"], parse_bool),
            model_dir=os.path.realpath(model_dir),
            skip_trainers=c.get("skip_trainers", d["skip_trainers"], parse_bool),
            skip_strategies=c.get("skip_strategies", d["skip_strategies"], parse_bool),
            skip_scoring=c.get("skip_scoring", d["skip_scoring"], parse_bool),
            random_strategy=c.raw("random_strategy"),
            dicomweb_search_filter=c.raw("dicomweb_search_filter"),
            al_max_samples=c.get("al_max_samples", d["al_max_samples"], parse_number, 0, 1_000_000, int),
            train=train_defaults(conf, preset),
        )


class _Reader:
    """``conf`` with blank values read as absent, and parse errors turned into ``ConfError("--conf KEY ...")``."""

    def __init__(self, conf: Mapping[str, Any]):
        self.conf = dict(conf or {})

    def raw(self, key: str) -> Any:
        value = self.conf.get(key)
        return None if is_unset(value) else (value.strip() if isinstance(value, str) else value)

    def get(self, key: str, default: Any, parse: Callable[..., Any], *args: Any) -> Any:
        raw = self.raw(key)
        if raw is None:
            return default
        try:
            return parse(raw, *args)
        except ValueError as e:
            raise ConfError(f"--conf {key} {e}") from None


def _limits(c: _Reader) -> ServerLimits:
    d = ServerLimits()
    return ServerLimits(
        max_concurrent_infers=c.get("max_concurrent_infers", d.max_concurrent_infers, parse_number, 1, 64, int),
        max_queued_infers=c.get("max_queued_infers", d.max_queued_infers, parse_number, 0, 10_000, int),
        max_upload_mb=c.get("max_upload_mb", d.max_upload_mb, parse_number, 0.001, 1e7),
        max_voxels=c.get("max_voxels", d.max_voxels, parse_number, 1, 1e13, int),
    )


def train_defaults(conf: Mapping[str, Any], preset: str = DEFAULT_PRESET) -> TrainConfig:
    """``--conf train_max_epochs 20 --conf train_learning_rate 1e-3 ...`` -> the train task's default ``TrainConfig``
    (learning rate: the preset's, ``lib/defaults.py``)."""
    cfg = TrainConfig(learning_rate=DEFAULT_LEARNING_RATE.get(preset, DEFAULT_LEARNING_RATE[DEFAULT_PRESET]))
    for key, value in (conf or {}).items():
        if key.startswith(TRAIN_PREFIX) and not is_unset(value):
            try:
                cfg = TrainConfig.from_mapping({key[len(TRAIN_PREFIX):]: value}, base=cfg)
            except (TypeError, ValueError) as e:
                raise ConfError(f"--conf {key}: {e}") from None
    return cfg


def default_model_dir(app_dir: str) -> str:
    """``<repository>/model`` for ``<repository>/apps/refsam3d``."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(app_dir))), "model")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def conf_table() -> List[Tuple[str, str]]:
    """(``--conf`` key, its default as docs/app.md shows it) for every key of :class:`AppSettings`."""
    rows: List[Tuple[str, str]] = []
    for f in fields(AppSettings):
        if f.name == "limits":
            rows += [(g.name, _shown(g.default)) for g in fields(ServerLimits)]
        elif f.name == "train":
            rows.append(("train_keep_versions", _shown(TrainConfig().keep_versions)))
        elif f.metadata.get("conf"):
            shown = f.metadata.get("shown")
            rows.append((f.metadata.get("key") or f.name, shown if shown is not None else _shown(f.default)))
    return rows


__all__ = ["AppSettings", "ConfError", "TRAIN_PREFIX", "conf_table", "default_model_dir", "train_defaults"]
