"""The hippocampus benchmark's CNN baseline: MONAI ``DynUNet`` configured like nnU-Net's 3d_fullres plan for MSD
Task04 (patch 40x56x40, 3x3x3 kernels, 3 poolings, 32-256 filters, instance norm, leaky ReLU, SGD momentum 0.99
Nesterov, lr 1e-2, Dice + CE with softmax; no deep supervision), behind the training engine's
``SegmentationAdapter`` so that it trains and is evaluated by the same code as RefSAM3D
(``benchmarks/bench_hippocampus.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

# nnU-Net 3d_fullres-like baseline (Task04 plan: patch 40x56x40, 3 poolings, batch 9 on a GPU)
BASELINE_RECIPE = dict(
    learning_rate=1e-2,
    weight_decay=3e-5,
    warmup_fraction=0.0,
    batch_size=2,
    num_samples=1,
    grad_clip=12.0,
    crop_size=[40, 56, 40],
    flip_axes=[0],
    augment=True,
    val_interval=10,  # validate every 10 epochs and at the end (the lr decays to 0: the last model is usually best)
    val_max_cases=0,
    publish="best",
)


def build_dynunet(num_classes: int):
    """nnU-Net's Task04 3d_fullres network as a MONAI ``DynUNet`` (background + ``num_classes - 1`` labels)."""
    from monai.networks.nets import DynUNet

    return DynUNet(
        spatial_dims=3, in_channels=1, out_channels=num_classes,
        kernel_size=[[3, 3, 3]] * 4, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        upsample_kernel_size=[[2, 2, 2]] * 3, filters=[32, 64, 128, 256],
        norm_name=("INSTANCE", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=False, res_block=False,
    )


def make_baseline_adapter(entries: Sequence, roi_size: Sequence[int], device: str = "auto", overlap: float = 0.25):
    """The DynUNet behind ``SegmentationAdapter``: softmax over background + ``entries``, sliding-window inference
    with ``roi_size`` windows and optional test-time mirroring (``adapter.mirror_axes``)."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss

    from lib.inference import mirror_averaged
    from lib.training import SegmentationAdapter, resolve_device

    class MultiClassAdapter(SegmentationAdapter):
        """A softmax CNN over background + labels, trained and evaluated through the same engine."""

        def __init__(self):
            self.entries = list(entries)
            self.model = build_dynunet(len(self.entries) + 1)
            self.roi_size = tuple(roi_size)
            self.overlap = overlap
            self.mirror_axes: tuple[int, ...] = ()  # test-time flips (set for the test evaluation)
            self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
            self.to(resolve_device(device))

        def parameters_to_optimise(self):
            return list(self.model.parameters())

        def make_optimizer(self, cfg):
            return torch.optim.SGD(self.model.parameters(), lr=cfg.learning_rate, momentum=0.99, nesterov=True,
                                   weight_decay=cfg.weight_decay)

        def _channels(self, label):
            out = torch.zeros_like(label)
            for k, e in enumerate(self.entries, start=1):
                out[label.round() == e.index] = k
            return out

        def training_loss(self, image, label):
            logits = self.model(image)
            return self.loss_fn(logits.float(), self._channels(label)), {}

        def segment(self, image):
            def predict(x):  # softmax probabilities [1, 1 + K, D, H, W]
                return torch.softmax(sliding_window_inference(x.to(self.device), self.roi_size, 1, self.model,
                                                              overlap=self.overlap, mode="gaussian"), dim=1)

            with torch.no_grad():
                probs = mirror_averaged(predict, image, self.mirror_axes)
            cls = probs[0].argmax(0).cpu()
            return torch.stack([cls == k for k in range(1, len(self.entries) + 1)], dim=0)

        def save(self, path, extra=None):
            import os
            import tempfile

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=str(Path(path).parent), suffix=".tmp")
            os.close(fd)
            torch.save({"model": "DynUNet", "state_dict": self.model.state_dict(), "extra": extra or {}}, tmp)
            os.replace(tmp, path)

        def describe(self):
            n = sum(p.numel() for p in self.model.parameters())
            return {"model": "DynUNet (nnU-Net 3d_fullres-like)", "roi_size": list(self.roi_size),
                    "parameters": {"total": n, "trainable": n}}

    return MultiClassAdapter()
