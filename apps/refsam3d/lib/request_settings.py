"""The per-request settings: an inference request's options, and a train request's ``TrainConfig``.

Parsed once per request, with the app's settings (``lib/settings.py``) as the defaults.  Inference options that
cannot be used are ``Unprocessable`` (422, ``lib/errors.py``) with the messages clients have always read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from lib.defaults import PRESETS
from lib.errors import Unprocessable
from lib.parsing import first, parse_bool, parse_choice, parse_modality
from lib.training.config import TrainConfig

RESULT_EXTENSIONS = (".nrrd", ".seg.nrrd", ".nii.gz", ".nii")
RESULT_DTYPES = ("uint8", "uint16", "int16", "int32", "uint32")


@dataclass(frozen=True)
class InferOptions:
    """``threshold``, ``sw_overlap``, ``modality``, ``result_extension``, ``result_dtype`` of one request."""

    threshold: float = 0.5
    sw_overlap: Union[str, float] = "auto"
    modality: str = "CT"
    result_extension: Optional[str] = None  # None: the image's own
    result_dtype: Optional[str] = None  # None: the smallest that holds the values

    @classmethod
    def from_request(cls, request: Mapping[str, Any], sw_overlap: Union[str, float], modality: str) -> "InferOptions":
        """``request``'s options; ``sw_overlap`` and ``modality``: the server's settings, used when not given."""
        return cls(threshold=_threshold(request.get("threshold", 0.5)),
                   sw_overlap=_overlap(request.get("sw_overlap", sw_overlap)),
                   modality=_modality(request.get("modality"), modality),
                   result_extension=_extension(request.get("result_extension") or None),
                   result_dtype=_dtype(request.get("result_dtype") or None))


def _threshold(thr: Any) -> float:
    try:
        thr = float(first(thr))
    except (TypeError, ValueError):
        raise Unprocessable(f"threshold must be a number between 0 and 1, got {thr!r}") from None
    if not 0.0 < thr < 1.0:
        raise Unprocessable(f"threshold must be between 0 and 1 (exclusive), got {thr}")
    return thr


def _overlap(ov: Any) -> Union[str, float]:
    if isinstance(ov, str) and ov.strip().lower() in ("", "auto"):
        return "auto"
    try:
        ov = float(ov)
    except (TypeError, ValueError):
        raise Unprocessable(f"sw_overlap must be 'auto' or a number in [0, 0.9], got {ov!r}") from None
    if not 0.0 <= ov <= 0.9:
        raise Unprocessable(f"sw_overlap must be 'auto' or a number in [0, 0.9], got {ov}")
    return ov


def _modality(given: Any, default: str) -> str:
    try:
        return parse_modality(given or default)
    except ValueError:
        raise Unprocessable(f"modality must be CT or MR, got {given!r}") from None


def _extension(ext: Any) -> Optional[str]:
    if ext is None:
        return None
    ext = str(ext).strip().lower()
    ext = ext if ext.startswith(".") else "." + ext
    if ext not in RESULT_EXTENSIONS:
        raise Unprocessable(f"result_extension must be one of {', '.join(RESULT_EXTENSIONS)}, got {ext!r}")
    return ext


def _dtype(dtype: Any) -> Optional[str]:
    if dtype is None:
        return None
    dtype = str(dtype).strip().lower()
    if dtype not in RESULT_DTYPES:
        raise Unprocessable(f"result_dtype must be one of {', '.join(RESULT_DTYPES)}, got {dtype!r}")
    return dtype


@dataclass(frozen=True)
class TrainRequest:
    """A ``POST /train/refsam3d`` request: the run's options, the preset to train, where to start from."""

    config: TrainConfig
    preset: str
    pretrained: bool  # continue from the published model when there is one
    name: str  # the run's folder under the train task's model dir

    @classmethod
    def from_request(cls, request: Mapping[str, Any], defaults: TrainConfig, served_preset: str) -> "TrainRequest":
        """``request`` (the viewer's edits of the task's options) over ``defaults`` (``AppSettings.train``);
        ``ValueError`` naming the option for a bad value."""
        try:
            preset = parse_choice(first(request.get("preset")) or served_preset, PRESETS)
        except ValueError as e:
            raise ValueError(f"preset {e}") from None
        try:
            pretrained = parse_bool(first(request.get("pretrained", True)))
        except ValueError as e:
            raise ValueError(f"pretrained {e}") from None
        return cls(config=TrainConfig.from_mapping(request, base=defaults), preset=preset, pretrained=pretrained,
                   name=str(first(request.get("name")) or "train_01"))
