"""What the training loop needs from a network: a loss on a batch, a segmentation of a volume, a save.

``PromptModelAdapter`` wraps RefSAM3D (text prompts, one sigmoid channel per prompt). The benchmark
wraps its CNN baseline in the same interface so both are trained and evaluated by the same code.
"""

from __future__ import annotations

import random
from typing import Any, Optional, Sequence

import torch

from lib.devices import resolve_device  # noqa: F401  (re-exported by lib.training)

from .config import TrainConfig
from .inferer import PromptSlidingWindowInferer
from .losses import prompt_loss
from .prompts import LabelEntry, phrasing_metadata, prompt_options, sample_prompts


class SegmentationAdapter:
    """Interface used by :func:`lib.training.engine.run_training` and :func:`lib.evaluation.evaluate`."""

    model: torch.nn.Module
    entries: list[LabelEntry]
    device: torch.device

    def parameters_to_optimise(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def make_optimizer(self, cfg: TrainConfig) -> torch.optim.Optimizer:
        """AdamW (the paper's optimiser) on the trainable parameters; a baseline may use its own."""
        return torch.optim.AdamW(self.parameters_to_optimise(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def training_loss(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``image [B,1,*crop]``, ``label [B,1,*crop]`` (label-set indices) -> (loss, info)."""
        raise NotImplementedError

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """``[1,1,*spatial]`` full volume -> ``[K,*spatial]`` bool masks in ``entries`` order (one label map)."""
        raise NotImplementedError

    def save(self, path, extra: dict | None = None) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        return {}

    def to(self, device) -> "SegmentationAdapter":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters training updates: ``model.trainable_parameters()`` where defined, with ``requires_grad``."""
    params = model.trainable_parameters() if hasattr(model, "trainable_parameters") else model.parameters()
    return [p for p in params if p.requires_grad]


class ProbabilitySegmenter:
    """``segment`` / ``segment_each`` / ``segment_and_each`` from ``predict_probs`` (one sigmoid channel per prompt)."""

    entries: list[LabelEntry]
    threshold: float

    def predict_probs(self, image: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``[1,1,*spatial]`` -> ``[K,*spatial]`` float probabilities, one channel per prompt."""
        raise NotImplementedError

    def _label_probs(self, image: torch.Tensor) -> torch.Tensor:
        return self.predict_probs(image, [e.prompt for e in self.entries])

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """One label map: each voxel goes to its most probable prompt above ``threshold`` (as the server does)."""
        from lib.evaluation import probs_to_masks

        return probs_to_masks(self._label_probs(image), self.threshold, exclusive=True)

    def segment_each(self, image: torch.Tensor) -> torch.Tensor:
        """Every prompt thresholded on its own (no competition between prompts): for routing checks."""
        return self._label_probs(image) >= self.threshold

    def segment_and_each(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(segment(image), segment_each(image))`` from one inference."""
        from lib.evaluation import probs_to_masks

        probs = self._label_probs(image)
        return probs_to_masks(probs, self.threshold, exclusive=True), probs >= self.threshold


class PromptModelAdapter(ProbabilitySegmenter, SegmentationAdapter):
    """RefSAM3D: each step samples K prompts (present + absent labels), loss Dice+BCE per prompt channel."""

    def __init__(self, model: torch.nn.Module, entries: Sequence[LabelEntry], cfg: TrainConfig,
                 roi_size: Sequence[int], overlap: float = 0.25, device: str | torch.device = "auto",
                 threshold: float = 0.5, seed: int = 0, mirror_axes: Sequence[int] = ()):
        self.model = model
        self.entries = list(entries)
        if not self.entries:
            raise ValueError("no labels to train")
        self.cfg = cfg
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap = float(overlap)
        self.threshold = float(threshold)
        self.mirror_axes = tuple(mirror_axes)  # test-time flips averaged by predict_probs (none: one pass)
        self.precision: Optional[torch.dtype] = None  # autocast dtype of the image encoding in predict_probs (None: float32)
        self.loss_fn = prompt_loss(cfg)
        self.rng = random.Random(seed)
        self.prompt_options = prompt_options(self.entries, cfg)  # phrasings, negatives (lib/training/prompts.py)
        self.to(resolve_device(device))

    def parameters_to_optimise(self) -> list[torch.nn.Parameter]:
        return trainable_parameters(self.model)

    def training_loss(self, image, label):
        prompts, target, names = sample_prompts(label, self.entries, rng=self.rng, **self.prompt_options)
        info: dict = {}
        if self.cfg.clicks:  # simulated clicks: text only / text + clicks / clicks only per (crop, prompt)
            from .clicks import click_training_logits

            logits, info = click_training_logits(self.model, image, prompts, target.to(image.device), self.cfg, self.rng)
        else:
            logits = self.model(image, prompts)
        loss = self.loss_fn(logits, target.to(logits.device))
        return loss, {"prompts": len(prompts), "absent": int((target.flatten(2).sum(-1) == 0).sum()), **info}

    @property
    def inferer(self) -> PromptSlidingWindowInferer:
        """The validation window (``RefSAM3DTrain.val_inferer`` returns this too)."""
        return PromptSlidingWindowInferer(self.roi_size, self.overlap)

    def predict_probs(self, image: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        from lib.inference import mirror_averaged

        inferer = self.inferer

        def predict(x: torch.Tensor) -> torch.Tensor:
            return inferer(x, self.model, prompts, device=self.device, precision=self.precision)

        return mirror_averaged(predict, image, self.mirror_axes)[0].float()  # [K, D, H, W]

    def save(self, path, extra=None):
        from lib.model import save_checkpoint

        from .runner import public_text_encoder

        stored_text = public_text_encoder(self.model.config.get("text_encoder"))
        save_checkpoint(self.model, str(path), extra={**(extra or {}), **phrasing_metadata(self.entries, self.cfg)},
                        config_overrides={"text_encoder": stored_text})

    def describe(self) -> dict:
        d: dict[str, Any] = {"model": "RefSAM3D", "roi_size": list(self.roi_size)}
        config = getattr(self.model, "config", None)
        if isinstance(config, dict):
            d["preset"] = config.get("preset")
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.parameters_to_optimise())
        d["parameters"] = {"total": int(total), "trainable": int(trainable)}
        return d


class EnsembleSegmenter(ProbabilitySegmenter):
    """Several trained models as one: their probabilities averaged, then thresholded once.

    nnU-Net's ensemble of its five cross-validation folds; here any checkpoints trained on the same
    label set (different seeds, folds or recipes). Members keep their own window size and mirroring.
    """

    def __init__(self, members: Sequence[PromptModelAdapter]):
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one model")
        names = [e.name for e in members[0].entries]
        for i, m in enumerate(members[1:], start=2):
            if [e.name for e in m.entries] != names:
                raise ValueError(f"model {i} segments {[e.name for e in m.entries]}, model 1 {names}: "
                                 "ensemble members must answer the same labels")
        self.members = members
        self.entries = list(members[0].entries)
        self.threshold = members[0].threshold
        self.device = members[0].device

    def predict_probs(self, image: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        total = self.members[0].predict_probs(image, prompts)
        for member in self.members[1:]:
            total = total + member.predict_probs(image, prompts).to(total.device)
        return total / len(self.members)  # [K, D, H, W]
