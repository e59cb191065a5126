"""TaskConfig ``refsam3d``: owns the label set, the weights and the encoding cache, from the parsed settings.

The ``--conf`` keys are parsed once into ``lib/settings.py:AppSettings`` (docs/app.md lists them with their
defaults); ``init`` takes that object (``settings=``, as ``main.py`` passes it) or parses ``conf`` itself.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Union

from lib.encoding_cache import EncodingCache
from lib.infers.click_tasks import click_task_options
from lib.infers.refsam3d import RefSAM3DInfer
from lib.labelsets import LabelSet, available_label_sets
from lib.model_store import ModelStore
from lib.precision import precision_name, resolve_precision
from lib.settings import AppSettings, ConfError, default_model_dir  # noqa: F401  (the last two: re-exported)

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)


class RefSAM3DConfig(TaskConfig):
    """Everything the infer task, the trainer and the active-learning code share."""

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any,
             settings: Optional[AppSettings] = None, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.conf = dict(conf or {})
        s = self.settings = settings if settings is not None else AppSettings.from_conf(self.conf)
        self.preset = s.preset
        self.label_set: LabelSet = s.label_set
        self.labels = self.label_set.labels
        self.modality = s.modality
        self.target_spacing = s.target_spacing
        self.roi_size = s.roi_size
        self.preload = s.preload

        self.store = ModelStore(
            model_dir=self.model_dir,
            preset=s.preset,
            sam_checkpoint=s.sam_checkpoint,
            text_encoder=s.text_encoder,
            use_pretrained_model=s.use_pretrained_model,
            device=s.device,
            sam_url=s.sam_url,
        )
        self.precision = resolve_precision(s.precision, self.store.device)
        self.cache = EncodingCache(max_bytes=int(s.cache_size_mb * 2**20))
        self.extra_warnings: list = []  # app-level problems (e.g. a failed dcmqi download) shown in /info
        self.path = [str(self.store.published_path)]
        logger.info(
            f"RefSAM3D: preset={s.preset} label_set={self.label_set.name} ({len(self.labels)} labels, "
            f"{s.modality}) spacing={s.target_spacing} roi={s.roi_size} overlap={s.sw_overlap} "
            f"device={self.store.device} precision={precision_name(self.precision)} cache={s.cache_size_mb:.0f} MiB; "
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
                settings=self.settings,
                cache=self.cache,
                extra_warnings=self.extra_warnings,
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
