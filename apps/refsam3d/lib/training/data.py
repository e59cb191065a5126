"""Data lists, splits, transforms and loaders for training and validation (no MONAI Label here)."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Sequence

import torch
from monai.data import CacheDataset, Dataset, ThreadDataLoader, DataLoader
from monai.transforms import (
    Compose,
    EnsureTyped,
    FgBgToIndicesd,
    RandAdjustContrastd,
    RandAffined,
    RandCoarseDropoutd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSharpend,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    SelectItemsd,
    SpatialPadd,
)

from .config import AUGMENTATION_PROFILES, TrainConfig

logger = logging.getLogger(__name__)

KEYS = ("image", "label")


# ----------------------------------------------------------------------------------------------- data lists
def case_id(path: str | os.PathLike) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nii.gz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def msd_datalist(folder: str | os.PathLike, require_labels: bool = True) -> list[dict]:
    """``[{"id", "image", "label"}]`` of an MSD-layout folder (``dataset.json``, ``imagesTr``, ``labelsTr``).

    Without ``dataset.json`` the image/label files of ``imagesTr``/``labelsTr`` are paired by name.
    Multi-channel MSD tasks are not supported (RefSAM3D takes one channel).
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    items: list[dict] = []
    ds_json = root / "dataset.json"
    if ds_json.exists():
        meta = json.loads(ds_json.read_text())
        for rec in meta.get("training", []):
            image = (root / rec["image"]).resolve()
            label = (root / rec["label"]).resolve() if rec.get("label") else None
            items.append({"id": case_id(image), "image": str(image), "label": str(label) if label else None})
    else:
        images_dir = root / "imagesTr"
        labels_dir = root / "labelsTr"
        if not images_dir.is_dir():
            raise FileNotFoundError(f"{root} has neither dataset.json nor imagesTr/")
        for image in sorted(images_dir.iterdir()):
            if image.name.startswith("."):
                continue
            cid = case_id(image)
            cid = cid[:-5] if cid.endswith("_0000") else cid
            label = next((p for p in labels_dir.glob(f"{cid}.*")), None) if labels_dir.is_dir() else None
            items.append({"id": cid, "image": str(image), "label": str(label) if label else None})
    missing = [it["id"] for it in items if not it["label"] or not Path(it["label"]).exists()]
    if require_labels and missing:
        raise FileNotFoundError(f"{len(missing)} case(s) without label in {root}: {missing[:5]}")
    if not items:
        raise ValueError(f"no cases found in {root}")
    return sorted(items, key=lambda it: it["id"])


def with_ids(datalist: Sequence[dict]) -> list[dict]:
    out = []
    for d in datalist:
        d = dict(d)
        d.setdefault("id", case_id(d["image"]))
        out.append(d)
    return out


def split_datalist(datalist: Sequence[dict], val_fraction: float, seed: int = 0,
                   min_train: int = 1) -> tuple[list[dict], list[dict]]:
    """Deterministic split (sorted by id, shuffled with ``seed``): ``(train, val)``.

    At least ``min_train`` cases stay in training; with fewer than 2 cases there is no validation.
    """
    items = sorted(with_ids(datalist), key=lambda d: d["id"])
    n_val = int(round(len(items) * val_fraction)) if val_fraction > 0 else 0
    if val_fraction > 0 and n_val == 0 and len(items) > min_train:
        n_val = 1
    n_val = max(0, min(n_val, len(items) - min_train))
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [items[i] for i in range(len(items)) if i not in val_idx]
    val = [items[i] for i in range(len(items)) if i in val_idx]
    return train, val


def save_split(path: str | os.PathLike, splits: dict[str, Sequence[dict]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({k: [d["id"] for d in v] for k, v in splits.items()}, indent=1))


def apply_split(datalist: Sequence[dict], split_file: str | os.PathLike) -> dict[str, list[dict]]:
    """Select cases by the ids listed in a split JSON (``{"train": [ids], "val": [ids], ...}``)."""
    spec = json.loads(Path(split_file).read_text())
    by_id = {d["id"]: d for d in with_ids(datalist)}
    out = {}
    for part, ids in spec.items():
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise KeyError(f"split {part!r} lists {len(unknown)} unknown case(s): {unknown[:5]}")
        out[part] = [by_id[i] for i in ids]
    return out


# ----------------------------------------------------------------------------------------------- transforms
def base_transforms(modality: str, target_spacing: Sequence[float], with_label: bool = True,
                    ct_window: Sequence[float] | None = None) -> list:
    """Loading + resampling + intensity exactly as inference does it (``lib.transforms``)."""
    from lib.transforms import load_transforms

    kwargs = {"ct_window": tuple(ct_window)} if ct_window is not None else {}
    return list(load_transforms(modality, tuple(target_spacing), keys=("image",),
                                label_key="label" if with_label else None, **kwargs))


def train_transforms(modality: str, target_spacing: Sequence[float], crop_size: Sequence[int],
                     cfg: TrainConfig, ct_window: Sequence[float] | None = None) -> Compose:
    """Deterministic part (cached in memory) followed by 1:1 pos/neg crops and the paper's augmentations."""
    crop = tuple(int(c) for c in crop_size)
    xforms = base_transforms(modality, target_spacing, with_label=True, ct_window=ct_window)
    xforms += [
        EnsureTyped(keys=KEYS, dtype=torch.float32, track_meta=False),
        SpatialPadd(keys=KEYS, spatial_size=crop, mode="constant"),
        FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0),
        RandCropByPosNegLabeld(
            keys=KEYS, label_key="label", spatial_size=crop, pos=cfg.pos_neg_ratio, neg=1.0,
            num_samples=cfg.num_samples, fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices",
        ),
        SelectItemsd(keys=KEYS),
    ]
    if cfg.augment:
        xforms += augmentations(cfg.flip_axes, cfg.augmentation)
    xforms.append(EnsureTyped(keys=KEYS, dtype=torch.float32, track_meta=False))
    return Compose(xforms)


def augmentations(flip_axes: Sequence[int] = (0,), profile: str = "paper") -> list:
    """Random augmentations after cropping, on images scaled to [0, 1].

    ``paper``: rotation, scaling, shear, translation (one affine), flips, brightness, contrast, noise,
    blur/sharpness and erasing -- the paper's list where MONAI has the transform (no posterisation in MONAI).
    ``nnunet``: nnU-Net v2's default training augmentation in MONAI transforms (rotation +-30 deg and scaling
    0.7-1.4 with p 0.2 each, noise, blur, multiplicative brightness, contrast, low-resolution simulation,
    gamma and inverted gamma), with its probabilities; noise std rescaled from z-scores to [0, 1] images.
    ``flip``: the flips alone (the lightest set: every sample is a real image, mirrored or not).
    """
    flips = [RandFlipd(keys=KEYS, prob=0.5, spatial_axis=int(a)) for a in flip_axes]
    if profile == "flip":
        return flips
    if profile == "nnunet":
        return _nnunet_augmentations(flips)
    if profile != "paper":
        raise ValueError(f"augmentation must be one of {AUGMENTATION_PROFILES}, got {profile!r}")
    aug = [
        RandAffined(
            keys=KEYS, prob=0.3, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.15, 0.15, 0.15),
            shear_range=(0.08,) * 6, translate_range=(3, 3, 3), mode=("bilinear", "nearest"), padding_mode="zeros",
        ),
    ]
    aug += flips
    aug += [
        RandScaleIntensityd(keys="image", factors=0.15, prob=0.2),  # brightness (multiplicative)
        RandShiftIntensityd(keys="image", offsets=0.05, prob=0.2),  # brightness (additive)
        RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.2),  # contrast
        RandGaussianNoised(keys="image", std=0.02, prob=0.1),
        RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.1),
        RandGaussianSharpend(keys="image", prob=0.1),  # sharpness
        RandCoarseDropoutd(keys="image", holes=1, max_holes=3, spatial_size=4, max_spatial_size=10,
                           fill_value=0.0, prob=0.1),  # erasing
    ]
    return aug


def _nnunet_augmentations(flips: list) -> list:
    """nnU-Net v2 ``nnUNetTrainer.get_training_transforms`` (3D, no elastic deformation) in MONAI terms."""
    aug = [
        RandAffined(  # rotation p 0.2 and scaling p 0.2 -> an affine with p 1 - 0.8^2
            keys=KEYS, prob=0.36, rotate_range=(0.52, 0.52, 0.52), scale_range=((-0.3, 0.4),) * 3,
            mode=("bilinear", "nearest"), padding_mode="zeros",
        ),
        RandGaussianNoised(keys="image", std=0.06, prob=0.1),  # variance 0.1 of z-scores ~ std 0.06 in [0, 1]
        RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.2),
        RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),  # multiplicative brightness 0.75-1.25
        RandScaleIntensityFixedMeand(keys="image", factors=0.25, preserve_range=True, prob=0.15),  # contrast
        RandSimulateLowResolutiond(keys="image", zoom_range=(0.5, 1.0), prob=0.25),
        RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), invert_image=True, retain_stats=True, prob=0.1),
        RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), retain_stats=True, prob=0.3),
    ]
    return aug + flips


def val_transforms(modality: str, target_spacing: Sequence[float], with_label: bool = True,
                   ct_window: Sequence[float] | None = None) -> Compose:
    keys = KEYS if with_label else ("image",)
    return Compose(base_transforms(modality, target_spacing, with_label, ct_window) +
                   [EnsureTyped(keys=keys, dtype=torch.float32)])


# ----------------------------------------------------------------------------------------------- loaders
def cached_dataset(datalist: Sequence[dict], transform: Compose, cache_rate: float = 1.0, workers: int = 0):
    data = [{k: v for k, v in d.items() if k in ("image", "label", "id")} for d in datalist]
    if cache_rate <= 0:
        return Dataset(data, transform)
    return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=workers or None, progress=False)


def train_loader(dataset, batch_size: int, num_workers: int = 0, seed: int = 0, sampler=None):
    """Shuffled batches; ``sampler`` (e.g. a ``DistributedSampler``: each rank its share) replaces the shuffling."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    order = {"shuffle": True} if sampler is None else {"shuffle": False, "sampler": sampler}
    if num_workers <= 0:
        # a background thread applies the random transforms while the network trains
        return ThreadDataLoader(dataset, batch_size=batch_size, num_workers=0, drop_last=False,
                                generator=generator, **order)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=False,
                      generator=generator, persistent_workers=True, **order)
