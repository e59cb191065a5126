"""Dice + cross-entropy for prompt-conditioned sigmoid outputs ``[B, K, *spatial]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from .config import TrainConfig


class PromptDiceCELoss(torch.nn.Module):
    """Soft Dice + binary cross-entropy, one sigmoid channel per prompt.

    Binary cross-entropy covers every (crop, prompt) pair, so an absent structure is pushed to an
    empty mask everywhere. The Dice term is averaged only over pairs whose target is not empty:
    for an empty target Dice is 0 for any non-empty prediction and its gradient vanishes, so it
    would only add noise (MONAI's ``DiceLoss`` computed on the non-empty pairs, ``sigmoid=True``).
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5):
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=smooth, smooth_dr=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
        logits = logits.float()
        target = target.float()
        loss = logits.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * F.binary_cross_entropy_with_logits(logits, target)
        if self.dice_weight:
            b, k = logits.shape[:2]
            flat_t = target.reshape(b * k, 1, -1)
            nonempty = flat_t.sum(dim=-1).reshape(-1) > 0
            if bool(nonempty.any()):
                per_pair = self.dice(logits.reshape(b * k, 1, -1)[nonempty], flat_t[nonempty])
                loss = loss + self.dice_weight * per_pair.mean()
        return loss


def prompt_loss(cfg: TrainConfig) -> PromptDiceCELoss:
    """The training loss of a run (``PromptModelAdapter.loss_fn`` and ``RefSAM3DTrain.loss_function``)."""
    return PromptDiceCELoss(cfg.dice_weight, cfg.ce_weight)
