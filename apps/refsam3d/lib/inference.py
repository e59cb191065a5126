"""Sliding-window inference of RefSAM3D over a whole (pre-processed) volume.

The image encoder runs once per window (``model.encode_image``); every prompt is decoded from that
encoding (``model.decode``), so K prompts cost one encoding plus K cheap decodes.  Window encodings
can be kept in a caller-owned mapping (``encodings``) keyed by window position, so a later request
on the same volume with other prompts skips the encoder entirely (see ``lib/encoding_cache.py``).

What is kept per window, on the device that computed it: the stage features (float32, small:
N x C x (roi/patch)^3) and the prompt-independent pixel-decoder features ``mask_features`` stored as
float16 (the large part: Cm x roi^3 x 2 bytes, e.g. 64 MiB for vit_b at 128^3).  Both are expensive to recompute (the pixel
decoder costs about as much as the ViT on CPU), so both are cached; every decode reads the stored
copy, so a first and a repeated request give identical masks.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Hashable, Iterator, List, MutableMapping, Optional, Sequence, Tuple

import torch
from monai.inferers import sliding_window_inference

from lib.precision import encoding_autocast

STORE_DTYPE = torch.float16


def auto_overlap(image_shape: Sequence[int], roi_size: Sequence[int], min_overlap: Optional[Sequence[int]] = None) -> Tuple[float, ...]:
    """Per-axis overlap giving the fewest windows whose neighbours still share ``min_overlap`` voxels
    (default ``roi / 16``, e.g. 8 voxels for a 128 window), for ``sliding_window_inference``.

    E.g. 243 x 201 x 223 voxels with a 128^3 window: 2 x 2 x 2 = 8 windows (overlap 0.25 gives 3 x 2 x 2 = 12)."""
    out = []
    for i, (s, r) in enumerate(zip(image_shape, roi_size)):
        s, r = int(s), int(r)
        m = int(min_overlap[i]) if min_overlap is not None else max(1, r // 16)
        m = min(max(m, 0), r - 1)
        if s <= r:
            out.append(0.0)
            continue
        n = max(2, -(-(s - m) // (r - m)))  # ceil: each extra window adds r - m new voxels
        interval = -(-(s - r) // (n - 1))  # ceil: windows start at 0, interval, ..., s - r
        out.append(1.0 - (interval + 0.5) / r)  # monai: int(r * (1 - overlap)) == interval
    return tuple(out)


def resolve_overlap(overlap, image_shape: Sequence[int], roi_size: Sequence[int]):
    """``"auto"`` (or None) -> :func:`auto_overlap`; a number -> MONAI's overlap fraction."""
    if overlap is None or (isinstance(overlap, str) and overlap.strip().lower() == "auto"):
        return auto_overlap(image_shape, roi_size)
    return float(overlap)


def _window_key(coord: Sequence[slice]) -> Tuple:
    """Position of one window: (batch index, (start, stop) per spatial axis)."""
    return (coord[0].start,) + tuple((s.start, s.stop) for s in coord[2:])


def _compact(enc):
    """The encoding as stored: stages float32, mask features float16, on the device that computed them (a GPU's
    cached encodings stay on the GPU: no round trip through the CPU for every prompt)."""
    cls = type(enc)
    return cls(
        [s.detach().to(torch.float32).contiguous() for s in enc.stages],
        enc.mask_features.detach().to(STORE_DTYPE, memory_format=torch.channels_last_3d),
        tuple(enc.input_shape),
        tuple(enc.scaled_shape),
    )


def _expand(enc, device: torch.device):
    cls = type(enc)
    return cls(
        [s.to(device, torch.float32) for s in enc.stages],
        enc.mask_features.to(device, memory_format=torch.channels_last_3d),  # stays float16: decoded slab by slab
        tuple(enc.input_shape),
        tuple(enc.scaled_shape),
    )


def encode_window(model, window: torch.Tensor, device: torch.device, precision: Optional[torch.dtype] = None):
    """One window ``[1, 1, *roi]`` -> its stored encoding (:func:`_compact`); the encoder under autocast when
    ``precision`` is a dtype (``lib/precision.py``)."""
    with encoding_autocast(device, precision):
        return _compact(model.encode_image(window.to(device)))


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def sliding_window_segment(
    model,
    image: torch.Tensor,
    prompts: Sequence[str],
    roi_size: Sequence[int],
    overlap: float | str = 0.25,
    sw_batch_size: int = 1,
    device: Optional[str | torch.device] = None,
    encodings: Optional[MutableMapping[Hashable, Any]] = None,
    mode: str = "gaussian",
    precision: Optional[torch.dtype] = None,
    key_prefix: Tuple = (),
) -> torch.Tensor:
    """Probabilities ``[1, K, D, H, W]`` in [0, 1] for ``image [1, 1, D, H, W]`` and K prompts.

    ``overlap``: MONAI's overlap fraction, or ``"auto"`` (fewest windows with a small blended margin, see
    :func:`auto_overlap`).

    ``encodings``: optional mapping window position -> stored encoding; missing windows are encoded
    and added, present ones are reused (the mapping must belong to this image, roi and overlap).
    ``precision``: autocast dtype of the image encoding (None: float32; see ``lib/precision.py``).
    ``key_prefix``: prepended to the window keys (a mirrored copy of the image keeps its own encodings).
    """
    if not prompts:
        raise ValueError("at least one prompt is needed")
    device = torch.device(device) if device is not None else _model_device(model)
    x = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5 or x.shape[:2] != (1, 1):
        raise ValueError(f"image must be [1, 1, D, H, W], got {tuple(x.shape)}")
    x = x.float()
    store: MutableMapping[Hashable, Any] = encodings if encodings is not None else {}

    with torch.no_grad():
        text = model.encode_text(list(prompts))

        def predictor(window: torch.Tensor, coords) -> torch.Tensor:
            outs = []
            for b in range(window.shape[0]):
                key = key_prefix + _window_key(coords[b])
                enc = store.get(key)
                if enc is None:
                    enc = encode_window(model, window[b : b + 1], device, precision)
                    store[key] = enc
                logits = model.decode(_expand(enc, device), text)  # [1, K, *roi], a fresh tensor
                outs.append(logits.float().sigmoid_())
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

        probs = sliding_window_inference(
            x,
            roi_size=tuple(int(r) for r in roi_size),
            sw_batch_size=max(1, int(sw_batch_size)),
            predictor=predictor,
            overlap=resolve_overlap(overlap, x.shape[2:], roi_size),
            mode=mode,
            padding_mode="constant",
            cval=0.0,
            sw_device=device,
            device=device,
            with_coord=True,
        )
    return probs.clamp_(0.0, 1.0)


def flip_combinations(axes: Sequence[int] = ()) -> List[Tuple[int, ...]]:
    """Every combination of flips of the spatial ``axes`` (0, 1, 2), as tensor dims of ``[B, C, D, H, W]``, the
    plain pass (``()``) first: ``2 ** len(axes)`` entries."""
    axes = sorted({int(a) for a in axes})
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"mirror axes must be spatial axes 0, 1 or 2, got {axes}")
    return [tuple(2 + a for a in c) for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def mirror_points(points, dims: Sequence[int], shape: Sequence[int]):
    """Voxel positions ``[..., 3]`` (numpy or torch) in an image of spatial ``shape`` (D, H, W) flipped along tensor
    ``dims`` of ``[B, C, D, H, W]`` (:func:`flip_combinations`): i -> n - 1 - i along each flipped axis; a copy."""
    out = points.clone() if isinstance(points, torch.Tensor) else points.copy()
    for d in dims:
        out[..., d - 2] = (shape[d - 2] - 1) - out[..., d - 2]
    return out


def mirrored_predictions(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                         axes: Sequence[int] = ()) -> Iterator[torch.Tensor]:
    """``predict`` over every combination of flips of the spatial ``axes`` (0, 1, 2 of ``[B, C, D, H, W]``), each
    flipped back, the plain pass first: ``2 ** len(axes)`` passes, one at a time."""
    for dims in flip_combinations(axes):
        yield predict(image.flip(dims)).flip(dims) if dims else predict(image)


def mirrored_segment(model, image: torch.Tensor, prompts: Sequence[str], roi_size: Sequence[int],
                     overlap: float | str = 0.25, sw_batch_size: int = 1, device: Optional[str | torch.device] = None,
                     encodings: Optional[MutableMapping[Hashable, Any]] = None, precision: Optional[torch.dtype] = None,
                     mirror_axes: Sequence[int] = ()) -> torch.Tensor:
    """:func:`sliding_window_segment` averaged over the flips of ``mirror_axes`` (nnU-Net's mirroring; ``()``: one
    plain pass). The windows of each mirrored copy are cached under their own keys (``("flip", dims, ...)``); the
    plain pass keeps the plain keys, which the click path decodes from."""
    total: Optional[torch.Tensor] = None
    combos = flip_combinations(mirror_axes)
    image = image.as_tensor() if hasattr(image, "as_tensor") else image  # flips of a plain tensor: no meta ops
    for dims in combos:
        x = image.flip(dims) if dims else image
        probs = sliding_window_segment(model, x, prompts, roi_size, overlap, sw_batch_size, device, encodings,
                                       precision=precision, key_prefix=("flip", dims) if dims else ())
        probs = probs.flip(dims) if dims else probs
        total = probs if total is None else total.add_(probs)
    assert total is not None
    return total.div_(len(combos)) if len(combos) > 1 else total


def mirror_averaged(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                    axes: Sequence[int] = ()) -> torch.Tensor:
    """nnU-Net's mirroring test-time augmentation: the mean of :func:`mirrored_predictions`; ``axes=()`` is one
    plain pass. Use the flips the model was trained with."""
    total: Optional[torch.Tensor] = None
    count = 0
    for out in mirrored_predictions(predict, image, axes):
        total, count = (out if total is None else total + out), count + 1
    assert total is not None
    return total / count


def _counts_and_sums(labels: torch.Tensor, probs: torch.Tensor, n: int, with_sums: bool,
                     slab_voxels: int = 1 << 20) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Voxels per label value ``0..n-1`` of ``labels`` (int32), and (``with_sums``) the float64 sum of ``probs``
    over each, a depth slab at a time: no int64 / float64 copy of the whole volume."""
    counts = torch.zeros(n, dtype=torch.int64)
    sums = torch.zeros(n, dtype=torch.float64) if with_sums else None
    step = max(1, slab_voxels // max(1, labels[0].numel()))
    for z in range(0, labels.shape[0], step):
        lab = labels[z:z + step].flatten()
        counts += torch.bincount(lab, minlength=n)
        if sums is not None:
            sums += torch.bincount(lab, weights=probs[z:z + step].flatten().double(), minlength=n)
    return counts, sums


def segment_prompts(
    model,
    image: torch.Tensor,
    prompts: Sequence[str],
    roi_size: Sequence[int],
    overlap: float | str = 0.25,
    sw_batch_size: int = 1,
    device: Optional[str | torch.device] = None,
    encodings: Optional[MutableMapping[Hashable, Any]] = None,
    threshold: float = 0.5,
    chunk: int = 8,
    confidences: Optional[Dict[int, Optional[float]]] = None,
    keep: Optional[Callable[[int, torch.Tensor], None]] = None,
    precision: Optional[torch.dtype] = None,
    mirror_axes: Sequence[int] = (),
) -> Tuple[torch.Tensor, Dict[int, int]]:
    """Label map ``[D, H, W]`` (int32, 0 = background, i = prompt i, 1-based) and voxel counts per prompt.

    A voxel gets the prompt with the highest probability when that probability is >= ``threshold``.
    Prompts are decoded ``chunk`` at a time so memory does not grow with the number of labels; the
    image is encoded once (window encodings are shared through ``encodings``).  ``confidences``, when
    given, receives per prompt the mean probability of its voxels (None for an empty mask). ``keep(i, probs)``, if
    given, receives each prompt's probabilities ``[D, H, W]`` (0-based prompt index), e.g. to cache them.
    ``mirror_axes``: average over these flips (:func:`mirrored_segment`).
    """
    store: MutableMapping[Hashable, Any] = encodings if encodings is not None else {}
    best_p: Optional[torch.Tensor] = None
    best_i: Optional[torch.Tensor] = None
    for start in range(0, len(prompts), max(1, int(chunk))):
        part = list(prompts[start : start + chunk])
        probs = mirrored_segment(model, image, part, roi_size, overlap, sw_batch_size, device, store,
                                 precision=precision, mirror_axes=mirror_axes)[0]
        if keep is not None:
            for i in range(probs.shape[0]):
                keep(start + i, probs[i])
        if probs.shape[0] == 1:  # one prompt: no arg-max to take
            p, i = probs[0], torch.full(probs.shape[1:], start + 1, dtype=torch.int32, device=probs.device)
        else:
            p, i = probs.max(dim=0)  # [D, H, W]
            i = i.to(torch.int32).add_(start + 1)
        if best_p is None:
            best_p, best_i = p, i
        else:
            better = p > best_p
            best_p = torch.where(better, p, best_p)
            best_i = torch.where(better, i, best_i)
        del probs
    assert best_p is not None and best_i is not None
    labels = best_i.masked_fill_(best_p < threshold, 0).cpu()
    counts, sums = _counts_and_sums(labels, best_p.cpu(), len(prompts) + 1, confidences is not None)
    if confidences is not None:
        confidences.update({k: float(sums[k] / counts[k]) if counts[k] else None for k in range(1, len(prompts) + 1)})
    return labels, {k: int(counts[k]) for k in range(1, len(prompts) + 1)}
