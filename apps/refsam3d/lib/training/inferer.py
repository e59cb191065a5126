"""The validation inferer: MONAI's ``Inferer`` interface over the prompt-conditioned sliding window.

``PromptModelAdapter.predict_probs`` (hence validation and the benchmark's evaluation) runs through it,
and ``RefSAM3DTrain.val_inferer`` returns the same object (``lib.inference.sliding_window_segment``:
Gaussian-blended windows, each window's image encoding computed once for all prompts).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.inferers import Inferer


class PromptSlidingWindowInferer(Inferer):
    """``inferer(image [1,1,*spatial], network, prompts) -> probabilities [1, K, *spatial]``."""

    def __init__(self, roi_size: Sequence[int], overlap: float | str = 0.25, sw_batch_size: int = 1):
        super().__init__()
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap = overlap if isinstance(overlap, str) else float(overlap)
        self.sw_batch_size = int(sw_batch_size)

    def __call__(self, inputs: torch.Tensor, network: Any, prompts: Sequence[str], device: Any = None,
                 precision: torch.dtype | None = None) -> torch.Tensor:  # type: ignore[override]
        from lib.inference import sliding_window_segment

        return sliding_window_segment(network, inputs, list(prompts), self.roi_size, overlap=self.overlap,
                                      sw_batch_size=self.sw_batch_size, device=device, precision=precision)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PromptSlidingWindowInferer)
                and (self.roi_size, self.overlap, self.sw_batch_size)
                == (other.roi_size, other.overlap, other.sw_batch_size))

    def __repr__(self) -> str:
        return (f"PromptSlidingWindowInferer(roi_size={self.roi_size}, overlap={self.overlap}, "
                f"sw_batch_size={self.sw_batch_size})")
