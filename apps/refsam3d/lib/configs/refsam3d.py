"""TaskConfig ``refsam3d``: reads the ``--conf`` keys, owns the label set, the weights and the encoding cache.

``--conf`` keys (all optional; see docs/app.md):

==========================  ==========================================================================
``preset``                  ``vit_b`` (paper model, SAM ViT-B; default) or ``small`` (CPU-sized)
``label_set``               built-in name (btcv, tumours, msd_hippocampus, totalsegmentator,
                            totalsegmentator_mr) or a JSON file path; default ``btcv``
``use_pretrained_model``    ``true`` (default): download missing SAM ViT-B / text-encoder weights
``sam_checkpoint``          local ``sam_vit_b_01ec64.pth`` (vit_b only)
``text_encoder``            Hugging Face name, local folder, or ``minilm`` (offline all-MiniLM-L6-v2)
``target_spacing``          mm, ``1.5`` or ``1.5,1.5,2``; default from the label set
``roi_size``                sliding-window size in voxels, ``64`` or ``96,96,64``; default from the label set
``sw_overlap``              ``auto`` (default: fewest windows that still overlap by roi/16 voxels) or a
                            MONAI overlap fraction 0-0.9 (e.g. 0.25)
``sw_batch_size``           windows per forward pass, default 1
``modality``                ``CT`` or ``MR``: overrides the label set's intensity handling
``device``                  ``auto`` (default), ``cpu``, ``cuda``, ``cuda:1``
``precision``               image encoding under ``bfloat16`` autocast, or ``float32``; ``auto`` (default):
                            bf16 on CUDA GPUs that support it and on CPUs with AMX or AVX512-BF16 (``lib/precision.py``)
``cache_size_mb``           memory for cached studies and encodings, default 2048 (0 disables)
``max_prompt_chars``        longest accepted ``text_prompt``, default 500
``min_prompt_similarity``   a prompt less similar than this (cosine, -1..1) to every phrasing the weights
                            know is warned about; default 0.6 (``lib/infers/prompt_report.py``)
``strict_prompts``          ``true``: such a prompt is answered 422 with the nearest labels; default false
``model_dir``               where weights live; default ``<repository>/model``
``sam_url``                 where to download SAM ViT-B from (a mirror); default the official address
``preload``                 ``true`` (default): build the network in the background at start-up
==========================  ==========================================================================
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Tuple, Union

from lib.encoding_cache import EncodingCache
from lib.infers.prompt_report import DEFAULT_MIN_SIMILARITY, PromptChecks
from lib.infers.click_tasks import click_task_options
from lib.infers.refsam3d import RefSAM3DInfer
from lib.precision import precision_name, resolve_precision
from lib.labelsets import LabelSet, available_label_sets, load_label_set
from lib.model_store import ModelStore

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

PRESET_NAMES = ("vit_b", "small")


class ConfError(ValueError):
    """A ``--conf`` value that cannot be used (the message names the key and what is allowed)."""


def conf_bool(conf: Dict[str, str], key: str, default: bool) -> bool:
    raw = conf.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise ConfError(f"--conf {key} must be true or false, got {raw!r}")


def conf_triple(conf: Dict[str, str], key: str, cast=float) -> Optional[Tuple]:
    raw = conf.get(key)
    if raw is None or str(raw).strip().lower() in ("", "auto", "default", "none"):
        return None
    try:
        parts = json.loads(raw) if str(raw).strip().startswith("[") else str(raw).replace("x", ",").split(",")
        values = [cast(float(p)) for p in (parts if isinstance(parts, list) else [parts]) if str(p).strip()]
    except (ValueError, TypeError):
        raise ConfError(f"--conf {key} must be one number or three separated by commas, got {raw!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or any(v <= 0 for v in values):
        raise ConfError(f"--conf {key} must be one positive number or three, got {raw!r}")
    return tuple(values)


def conf_number(conf: Dict[str, str], key: str, default: float, low: float, high: float, cast=float) -> Union[int, float]:
    raw = conf.get(key)
    if raw is None or str(raw).strip() == "":
        return cast(default)
    try:
        value = cast(float(raw))
    except (TypeError, ValueError):
        raise ConfError(f"--conf {key} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfError(f"--conf {key} must be between {low} and {high}, got {raw!r}")
    return value


def default_model_dir(app_dir: str) -> str:
    """``<repository>/model`` for ``<repository>/apps/refsam3d``."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(app_dir))), "model")


class RefSAM3DConfig(TaskConfig):
    """Everything the infer task, the trainer and the active-learning code share."""

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        conf = self.conf = dict(conf or {})

        self.preset = str(conf.get("preset", "vit_b")).strip().lower()
        if self.preset not in PRESET_NAMES:
            raise ConfError(f"--conf preset must be one of {', '.join(PRESET_NAMES)}, got {self.preset!r}")
        try:
            self.label_set: LabelSet = load_label_set(conf.get("label_set", "btcv"))
        except ValueError as e:
            raise ConfError(f"--conf label_set: {e}") from None
        self.labels = self.label_set.labels

        modality = conf.get("modality")
        self.modality = str(modality).strip().upper() if modality else self.label_set.modality
        self.modality = "MR" if self.modality == "MRI" else self.modality
        if self.modality not in ("CT", "MR"):
            raise ConfError(f"--conf modality must be CT or MR, got {modality!r}")
        self.target_spacing = conf_triple(conf, "target_spacing", float) or self.label_set.target_spacing
        self.roi_size = conf_triple(conf, "roi_size", int) or self.label_set.roi_size(self.preset)
        if str(conf.get("sw_overlap", "auto")).strip().lower() in ("", "auto"):
            self.sw_overlap_setting = "auto"  # fewest windows with a roi/16 blended margin (lib/inference.py)
            self.sw_overlap = 0.25  # a number for callers that need one (evaluation, active learning)
        else:
            self.sw_overlap = float(conf_number(conf, "sw_overlap", 0.25, 0.0, 0.9))
            self.sw_overlap_setting = self.sw_overlap
        self.sw_batch_size = int(conf_number(conf, "sw_batch_size", 1, 1, 64, int))
        self.max_prompt_chars = int(conf_number(conf, "max_prompt_chars", 500, 1, 100000, int))
        cache_mb = float(conf_number(conf, "cache_size_mb", 2048, 0, 1 << 22))
        self.prompt_checks = PromptChecks(
            min_similarity=float(conf_number(conf, "min_prompt_similarity", DEFAULT_MIN_SIMILARITY, -1.0, 1.0)),
            strict=conf_bool(conf, "strict_prompts", False))
        self.use_pretrained_model = conf_bool(conf, "use_pretrained_model", True)
        self.preload = conf_bool(conf, "preload", True)

        self.store = ModelStore(
            model_dir=self.model_dir,
            preset=self.preset,
            sam_checkpoint=conf.get("sam_checkpoint") or None,
            text_encoder=conf.get("text_encoder") or None,
            use_pretrained_model=self.use_pretrained_model,
            device=conf.get("device") or None,
            sam_url=conf.get("sam_url") or None,
        )
        try:
            self.precision = resolve_precision(conf.get("precision", "auto"), self.store.device)
        except ValueError as e:
            raise ConfError(f"--conf {e}") from None
        self.cache = EncodingCache(max_bytes=int(cache_mb * 2**20))
        self.extra_warnings: list = []  # app-level problems (e.g. a failed dcmqi download) shown in /info
        self.path = [str(self.store.published_path)]
        logger.info(
            f"RefSAM3D: preset={self.preset} label_set={self.label_set.name} ({len(self.labels)} labels, "
            f"{self.modality}) spacing={self.target_spacing} roi={self.roi_size} overlap={self.sw_overlap_setting} "
            f"device={self.store.device} precision={precision_name(self.precision)} cache={cache_mb:.0f} MiB; "
            f"available label sets: {available_label_sets()}"
        )
        if not self.store.has_trained_weights():  # the other warnings were logged by the ModelStore
            logger.warning(f"RefSAM3D: {self.store.warnings()[0]}")

    # ------------------------------------------------------------------ tasks
    def infer(self) -> Union[InferTask, Dict[str, InferTask]]:
        """``refsam3d`` (type segmentation: OHIF Auto-segmentation / Class Prompts, Slicer auto-segmentation) and
        the same task for the viewers' click tools (``lib/infers/click_tasks.py``): one model, one cache."""
        return {
            name: RefSAM3DInfer(
                store=self.store,
                label_set=self.label_set,
                cache=self.cache,
                target_spacing=self.target_spacing,
                roi_size=self.roi_size,
                sw_overlap=self.sw_overlap_setting,
                sw_batch_size=self.sw_batch_size,
                modality=self.modality,
                max_prompt_chars=self.max_prompt_chars,
                extra_warnings=self.extra_warnings,
                prompt_checks=self.prompt_checks,
                precision=self.precision,
                **options,
            )
            for name, options in click_task_options(self.name or "refsam3d").items()
        }

    def trainer(self) -> Optional[TrainTask]:
        try:
            from lib.trainers import RefSAM3DTrain
        except ImportError as e:
            logger.warning(f"RefSAM3D: no train task ({e})")
            return None
        return RefSAM3DTrain(config=self)

    def strategy(self) -> Union[None, Strategy, Dict[str, Strategy]]:
        try:
            from lib.activelearning import build_strategies
        except ImportError as e:
            logger.warning(f"RefSAM3D: no active-learning strategies ({e})")
            return {}
        return build_strategies(self)

    def scoring_method(self) -> Union[None, ScoringMethod, Dict[str, ScoringMethod]]:
        try:
            from lib.activelearning import build_scoring_methods
        except ImportError as e:
            logger.warning(f"RefSAM3D: no scoring methods ({e})")
            return {}
        return build_scoring_methods(self)
