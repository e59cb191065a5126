"""The one set of parsers for settings given as text (``--conf``), as JSON (REST requests) or from argparse.

Each returns a plain Python value or raises ``ValueError`` whose message reads after the setting's name
("must be ..., got ..."), so callers prefix it: ``f"--conf {key} {e}"``.  No MONAI Label import: the
training package and the scripts use them too.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from lib.defaults import MODALITIES

NONE_WORDS = ("", "auto", "none", "default")
TRUE_WORDS = ("1", "true", "t", "yes", "y", "on")
FALSE_WORDS = ("0", "false", "f", "no", "n", "off")


def first(value: Any) -> Any:
    """Viewers send the whole option list when a list-valued option was not changed: take its first item."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def is_unset(value: Any) -> bool:
    """None or blank text: the setting was not given."""
    return value is None or (isinstance(value, str) and not value.strip())


def parse_bool(value: Any) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case), booleans and numbers; "" and "none" are false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS + ("none", ""):
        return False
    raise ValueError(f"must be true or false, got {value!r}")


def parse_size(value: Any, dims: int = 3, cast: Callable[[float], Any] = int) -> tuple | None:
    """``"48"``, ``"48,64,48"``, ``"48x64x48"``, ``"[48, 64, 48]"``, ``48``, ``[48, 64, 48]`` -> ``dims`` positive
    values (``cast``: int for voxels, float for mm); None, "", "auto", "none", "default" -> None."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            text = value.strip().lower()
            if text in NONE_WORDS:
                return None
            parts = json.loads(text) if text.startswith("[") else text.replace("x", ",").replace(" ", ",").split(",")
            parts = parts if isinstance(parts, list) else [parts]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parts = [value]
        else:
            parts = list(value)
        values = [cast(float(p)) for p in parts if str(p).strip()]
    except (TypeError, ValueError):
        values = []
    if len(values) == 1:
        values = values * dims
    if len(values) != dims or any(v <= 0 for v in values):
        raise ValueError(f"must be one positive number or {dims} separated by commas, got {value!r}")
    return tuple(values)


def parse_number(value: Any, low: float, high: float, cast: Callable[[float], Any] = float) -> Any:
    """A number in ``[low, high]`` (``cast`` int for counts)."""
    try:
        number = cast(float(first(value)))
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"must be between {low:g} and {high:g}, got {value!r}")
    return number


def parse_choice(value: Any, choices: Sequence[str]) -> str:
    """One of ``choices`` (compared without case and surrounding spaces)."""
    text = str(first(value)).strip().lower()
    for choice in choices:
        if text == choice.lower():
            return choice
    raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")


def parse_modality(value: Any) -> str:
    """``CT`` or ``MR`` (``MRI`` and any case accepted)."""
    text = str(first(value)).strip().upper()
    text = "MR" if text == "MRI" else text
    if text not in MODALITIES:
        raise ValueError(f"must be CT or MR, got {value!r}")
    return text


def parse_axes(value: Any) -> tuple[int, ...]:
    """Spatial axes: ``"0,2"``, ``0``, ``[0, 2]`` -> ``(0, 2)``; ``""``/``"none"``/None -> ``()``."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip().lower()
        return () if text in ("", "none") else tuple(int(v) for v in text.split(",") if v.strip())
    if isinstance(value, (int, float)):
        return (int(value),)
    return tuple(int(v) for v in value)


def parse_mirror_axes(value: Any) -> str | tuple[int, ...]:
    """``"auto"`` (the weights' training flips) or spatial axes (0, 1, 2) as :func:`parse_axes`; ``"none"`` -> ``()``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        axes = parse_axes(value)
    except (TypeError, ValueError):
        axes = None
    if axes is None or any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"must be auto, none or spatial axes among 0, 1, 2 (e.g. 0 or 0,1), got {value!r}")
    return tuple(sorted(set(axes)))


def parse_labels(value: Any) -> list[str] | None:
    """``"all"``/None -> None (every label of the set); ``"a,b"`` or ``["a", "b"]`` -> names."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "all", "*"):
            return None
        return [v.strip() for v in text.split(",") if v.strip()]
    names = [str(v).strip() for v in value if str(v).strip()]
    if not names or any(n.lower() in ("all", "*") for n in names):
        return None
    return names


def parse_names(value: Any) -> list[str]:
    """``"a, b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (a list of free phrases; empty entries dropped)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def sizes_str(size: Sequence[int] | None) -> str:
    return "auto" if size is None else ",".join(str(int(s)) for s in size)
