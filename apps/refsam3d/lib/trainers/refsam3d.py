"""MONAI Label train task ``refsam3d``: fine-tune RefSAM3D on the datastore's final labels.

A thin ``BasicTrainTask``: MONAI Label gives the request (the user's ``config`` edits) and the data
list; ``network``, ``optimizer``, ``loss_function``, the transforms and ``val_inferer`` return what the run
uses (``train()`` builds it from them; the engine, ``lib.training.run_training`` -- the same code as
``scripts/train.py`` -- builds the same pieces with the same ``lib.training`` functions).
The best model (validation Dice) is published to ``ModelStore.published_path`` with the atomic
``save_checkpoint``; the infer task's ``ModelStore.get()`` notices the new file and reloads it.
``multi_gpu`` / ``gpus``: one DDP rank per GPU, spawned by ``BasicTrainTask.__call__`` (``lib/trainers/multi_gpu.py``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from monailabel.utils.others.generic import device_list

from lib.defaults import PRESETS
from lib.parsing import sizes_str
from lib.request_settings import TrainRequest
from lib.training import PromptModelAdapter, TrainData, TrainOutput, TrainRecipe, entries_from_label_set, run_training, split_datalist
from lib.training.config import AUGMENTATION_PROFILES
from lib.training.distributed import current, rank_device

from . import multi_gpu

logger = logging.getLogger(__name__)


class RefSAM3DTrain(BasicTrainTask):
    """Fine-tune RefSAM3D (text-prompted) on final labels; constructed as ``RefSAM3DTrain(config=task_config)``."""

    def __init__(self, config, description: str = "Fine-tune RefSAM3D on the final labels (text prompt per label)",
                 **kwargs):
        self.task_config = config
        self.model_root = str(config.model_dir)
        self.settings = settings = config.settings  # lib/settings.py: AppSettings, parsed once at start-up
        self.label_set = settings.label_set
        self.store = config.store
        self.preset = settings.preset
        self.base_cfg = settings.train
        self.roi_size = tuple(settings.roi_size)
        self.overlap = settings.sw_overlap_fraction
        self.modality = settings.modality
        self.target_spacing = tuple(settings.target_spacing)
        crop = self.base_cfg.crop_size or self.roi_size
        user_config: dict[str, Any] = {
            "name": "train_01",
            "pretrained": True,  # continue from the published model when there is one
            "device": device_list(),
            "max_epochs": self.base_cfg.max_epochs,
            "max_minutes": self.base_cfg.max_minutes,
            "crop_size": sizes_str(crop),
            "learning_rate": self.base_cfg.learning_rate,
            "weight_decay": self.base_cfg.weight_decay,
            "val_split": self.base_cfg.val_split,
            "train_batch_size": self.base_cfg.batch_size,
            "num_samples": self.base_cfg.num_samples,
            "preset": [self.preset] + [p for p in PRESETS if p != self.preset],
            "labels": ",".join(self.base_cfg.labels) if self.base_cfg.labels else "all",
            "augment": self.base_cfg.augment,
            "augmentation": [self.base_cfg.augmentation] + [a for a in AUGMENTATION_PROFILES
                                                            if a != self.base_cfg.augmentation],
            "publish_unvalidated": self.base_cfg.publish_unvalidated,
            "clicks": self.base_cfg.clicks,  # simulated clicks (text / text + clicks / clicks only)
            "multi_gpu": False,  # true: one DDP rank per GPU (needs 2+ CUDA GPUs, else one process and a warning)
            "gpus": "all",  # or "0,1": the GPUs of the ranks
        }
        model_dir = os.path.join(str(config.model_dir), str(config.name or "refsam3d"))
        super().__init__(
            model_dir=model_dir,
            description=description,
            config=user_config,
            amp=True,
            publish_path=str(self.store.published_path),
            labels=dict(self.label_set.labels),
            **kwargs,
        )
        # options of BasicTrainTask this task does not use (it has its own loop)
        for key in ("dataset", "dataloader", "tracking", "tracking_uri", "tracking_experiment_name",
                    "early_stop_patience", "val_batch_size"):
            self._config.pop(key, None)

    # ------------------------------------------------------------------ BasicTrainTask's parts = what training uses
    # train() builds its run from these methods (and the engine from the same lib.training functions they call).
    def _plan(self, context: Context) -> SimpleNamespace:
        """The run a request asks for (cached on the context): options, preset, window, labels, data, recipe."""
        plan = getattr(context, "refsam3d_plan", None)
        if plan is None:
            run = TrainRequest.from_request(context.request or {}, self.base_cfg, self.preset)  # lib/request_settings.py
            cfg, preset, roi = run.config, run.preset, self.settings.roi_for(run.preset)
            labelled = [d for d in (context.datalist or []) if d.get("label")]
            context.train_datalist, context.val_datalist = split_datalist(labelled, cfg.val_split, seed=cfg.seed)
            data = TrainData(context.train_datalist, context.val_datalist, self.modality, self.target_spacing,
                             tuple(cfg.crop_size) if cfg.crop_size else roi,
                             ct_window=self.settings.ct_window)
            plan = SimpleNamespace(run=run, cfg=cfg, preset=preset, roi=roi, entries=entries_from_label_set(self.label_set, cfg.labels),
                                   data=data, recipe=TrainRecipe(cfg, data))
            context.refsam3d_plan = plan
        return plan

    def network(self, context: Context):
        """The model to train: the published one to fine-tune (``pretrained``), else the base weights."""
        plan = self._plan(context)
        model, context.fine_tunes_published = self._load_model(plan.preset, plan.run.pretrained)
        return model

    def _adapter(self, context: Context) -> PromptModelAdapter:
        """The adapter the engine trains (``context.network`` + labels + options), built once per context."""
        if getattr(context, "adapter", None) is None:
            if context.network is None:
                context.network = self.network(context)
            plan = self._plan(context)
            context.adapter = PromptModelAdapter(context.network, plan.entries, plan.cfg, roi_size=plan.roi,
                                                 overlap=self.overlap, device=rank_device(plan.cfg.device, current()),
                                                 seed=plan.cfg.seed)
        return context.adapter

    def optimizer(self, context: Context):
        return self._plan(context).recipe.optimizer(self._adapter(context))

    def loss_function(self, context: Context):
        return self._adapter(context).loss_fn  # the loss the training step calls

    def train_pre_transforms(self, context: Context):
        return self._plan(context).recipe.train_transforms()

    def train_post_transforms(self, context: Context):
        return []

    def val_pre_transforms(self, context: Context):
        return self._plan(context).recipe.val_transforms()

    def val_inferer(self, context: Context):
        return self._adapter(context).inferer

    # ------------------------------------------------------------------ the run
    def _store_for(self, preset: str):
        if preset == self.preset:
            return self.store
        from lib.model_store import ModelStore

        store = self.store
        return ModelStore(
            self.model_root, preset,
            sam_checkpoint=store.sam_checkpoint,
            text_encoder=store.text_encoder,
            use_pretrained_model=store.use_pretrained_model,
        )

    def _load_model(self, preset: str, pretrained: bool):
        """(model, started_from_published): the published model to fine-tune, else the base weights."""
        store = self._store_for(preset)
        published = Path(store.published_path)
        if pretrained and published.exists():
            try:
                from lib.model import load_checkpoint

                model = load_checkpoint(
                    str(published),
                    sam_checkpoint=store.sam_checkpoint,
                    text_encoder=store.text_encoder,
                    map_location="cpu",
                )
                logger.info(f"Fine-tuning the published model {published}")
                return model, True
            except Exception as exc:  # unreadable file: start from the base weights, do not crash the run
                logger.warning(f"Published model {published} could not be loaded ({exc}); starting from base weights")
        logger.info("Training from the base weights (no published model, or pretrained=false)")
        return store.build_fresh(), False

    def stats(self):
        """The last run's stats; before any run, a 'not started' record (OHIF reads an empty one as 1/1 = 100 %)."""
        return super().stats() or {"status": "NOT STARTED", "epoch": 0, "total_epochs": self.base_cfg.max_epochs,
                                   "iteration": 0, "total_time": "0:00:00"}

    def pre_process(self, request, datastore: Datastore):
        return datastore.datalist()

    # ------------------------------------------------------------------ multi_gpu (lib/trainers/multi_gpu.py)
    def __call__(self, request, datastore: Datastore):
        return super().__call__(multi_gpu.plan(request, self._config.get("multi_gpu")), datastore)

    def __getstate__(self) -> dict:
        """What a spawned rank gets: the task without the app's config and model store (rebuilt from their settings)."""
        state = dict(self.__dict__)
        state.pop("task_config", None)
        state["store"] = multi_gpu.store_settings(state["store"])
        return state

    def __setstate__(self, state: dict) -> None:
        from lib.model_store import ModelStore

        self.__dict__.update(state)
        self.task_config = None
        self.store = ModelStore(**state["store"])

    @multi_gpu.joins_ranks  # with multi_gpu: this is a spawned rank; it joins the process group first
    def train(self, rank, world_size, request, datalist):
        context = Context()
        context.request, context.datalist = request, datalist
        plan = self._plan(context)
        store = self._store_for(plan.preset)
        if plan.preset != self.preset:
            logger.warning(f"Training preset {plan.preset!r} while the server serves {self.preset!r}: the result is "
                           f"published to {store.published_path} and served after a restart with --conf preset "
                           f"{plan.preset}")
        context.network = self.network(context)
        adapter = self._adapter(context)
        run_id = request.get("run_id")
        output_dir = Path(self._model_dir) / plan.run.name
        output_dir.mkdir(parents=True, exist_ok=True)
        logger.info(f"{len(plan.data.train) + len(plan.data.val)} labelled studies: {len(plan.data.train)} train, "
                    f"{len(plan.data.val)} validation; output {output_dir}")
        extra = {
            "label_set": self.label_set.to_json(),
            "label_set_name": self.label_set.name,
            "trained_labels": [e.name for e in plan.entries],
            "preset": plan.preset,
            "roi_size": list(plan.roi),
            "source": "monailabel train task",
        }
        return run_training(adapter, plan.cfg, plan.data, TrainOutput(
            store.published_path, stats_path=self._stats_path, events_dir=output_dir / f"events_{run_id}",
            checkpoint_extra=extra, run_id=run_id, fine_tunes_published=context.fine_tunes_published,
            run_info=multi_gpu.run_info(request, world_size)))
