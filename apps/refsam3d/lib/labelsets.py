"""Label sets: small JSON files mapping label name -> index -> text prompt.

A label set is what the viewers list (``/info``), what automatic segmentation segments, and what
``label_prompt`` indices refer to.  Built-in sets live in ``lib/labelsets/<name>.json``; any JSON
file of the same shape can be passed with ``--conf label_set /path/to/set.json``::

    {"name": "msd_hippocampus", "description": "...", "modality": "MR",
     "target_spacing": [1.0, 1.0, 1.0],
     "roi_size": {"small": [48, 48, 48], "vit_b": [128, 128, 128]},
     "ct_window": [-1000, 1000],                       # optional, CT only (HU mapped to [0, 1])
     "labels": [{"name": "anterior hippocampus", "index": 1, "prompt": "..."}, ...]}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

LABELSET_DIR = Path(__file__).resolve().parent / "labelsets"
MODALITIES = ("CT", "MR")
DEFAULT_CT_WINDOW = (-1000.0, 1000.0)
DEFAULT_ROI = {"small": (64, 64, 64), "vit_b": (128, 128, 128)}


def available_label_sets() -> List[str]:
    """Names of the built-in label sets (``lib/labelsets/*.json``)."""
    return sorted(p.stem for p in LABELSET_DIR.glob("*.json"))


@dataclass
class LabelSet:
    name: str
    description: str
    modality: str
    target_spacing: Tuple[float, float, float]
    entries: List[Dict[str, Any]]
    roi_sizes: Dict[str, Tuple[int, int, int]] = field(default_factory=dict)
    ct_window: Tuple[float, float] = DEFAULT_CT_WINDOW
    path: str = ""

    @property
    def labels(self) -> Dict[str, int]:
        """name -> index, sorted by index (MONAI Label's ``labels`` format)."""
        return {e["name"]: int(e["index"]) for e in sorted(self.entries, key=lambda e: int(e["index"]))}

    @property
    def prompts(self) -> Dict[str, str]:
        """name -> text prompt."""
        return {e["name"]: e["prompt"] for e in sorted(self.entries, key=lambda e: int(e["index"]))}

    def name_of(self, index: int) -> str:
        for e in self.entries:
            if int(e["index"]) == int(index):
                return e["name"]
        raise KeyError(f"label index {index} is not in label set '{self.name}'")

    def index_of(self, name: str) -> int:
        key = str(name).strip().lower()
        for e in self.entries:
            if e["name"].lower() == key:
                return int(e["index"])
        raise KeyError(f"label '{name}' is not in label set '{self.name}'")

    def roi_size(self, preset: str) -> Tuple[int, ...]:
        if preset in self.roi_sizes:
            return tuple(self.roi_sizes[preset])
        if preset in DEFAULT_ROI:
            return DEFAULT_ROI[preset]
        return tuple(next(iter(self.roi_sizes.values()))) if self.roi_sizes else DEFAULT_ROI["small"]

    def to_json(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "modality": self.modality,
            "target_spacing": list(self.target_spacing),
            "ct_window": list(self.ct_window),
            "roi_size": {k: list(v) for k, v in self.roi_sizes.items()},
            "labels": [dict(e) for e in sorted(self.entries, key=lambda e: int(e["index"]))],
        }


def _triple(value: Any, what: str, source: str, cast=float) -> tuple:
    if isinstance(value, (int, float)):
        value = [value] * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"label set {source}: '{what}' must be 3 numbers, got {value!r}")
    out = tuple(cast(v) for v in value)
    if any(v <= 0 for v in out):
        raise ValueError(f"label set {source}: '{what}' must be positive, got {value!r}")
    return out


def parse_label_set(data: Dict[str, Any], source: str = "<dict>") -> LabelSet:
    """Validate a label-set mapping; ValueError with a readable message on any problem."""
    if not isinstance(data, dict):
        raise ValueError(f"label set {source}: expected a JSON object")
    name = str(data.get("name") or Path(source).stem)
    modality = str(data.get("modality", "CT")).upper()
    if modality in ("MRI",):
        modality = "MR"
    if modality not in MODALITIES:
        raise ValueError(f"label set {source}: modality must be one of {MODALITIES}, got {modality!r}")
    spacing = _triple(data.get("target_spacing", [1.5, 1.5, 1.5]), "target_spacing", source)

    roi_raw = data.get("roi_size", {})
    if isinstance(roi_raw, (list, tuple, int)):
        roi_raw = {"small": roi_raw, "vit_b": roi_raw}
    roi = {str(k): _triple(v, f"roi_size.{k}", source, int) for k, v in roi_raw.items()}

    window = data.get("ct_window", DEFAULT_CT_WINDOW)
    if not isinstance(window, (list, tuple)) or len(window) != 2 or float(window[0]) >= float(window[1]):
        raise ValueError(f"label set {source}: 'ct_window' must be [low, high] HU with low < high, got {window!r}")

    labels = data.get("labels")
    if not isinstance(labels, list) or not labels:
        raise ValueError(f"label set {source}: 'labels' must be a non-empty list of {{name, index, prompt}}")
    entries, names, indices = [], set(), set()
    for item in labels:
        if not isinstance(item, dict) or "name" not in item or "index" not in item:
            raise ValueError(f"label set {source}: every label needs 'name' and 'index', got {item!r}")
        lname = str(item["name"]).strip()
        index = int(item["index"])
        prompt = str(item.get("prompt") or lname).strip()
        if not lname:
            raise ValueError(f"label set {source}: empty label name")
        if not 1 <= index <= 65535:
            raise ValueError(f"label set {source}: label '{lname}' index {index} must be in 1..65535 (0 is background)")
        if lname.lower() in names or index in indices:
            raise ValueError(f"label set {source}: duplicate label name or index ({lname!r}, {index})")
        names.add(lname.lower())
        indices.add(index)
        entries.append({"name": lname, "index": index, "prompt": prompt})
    return LabelSet(
        name=name,
        description=str(data.get("description", "")),
        modality=modality,
        target_spacing=spacing,
        entries=entries,
        roi_sizes=roi,
        ct_window=(float(window[0]), float(window[1])),
        path=source,
    )


def load_label_set(name_or_path: str | os.PathLike | None) -> LabelSet:
    """A built-in set by name (``btcv``, ``tumours``, ``msd_hippocampus``, ``totalsegmentator``, ...)
    or a JSON file path.  ValueError naming the available sets when it cannot be found or read."""
    key = str(name_or_path or "btcv").strip()
    path = Path(key).expanduser()
    if not (path.suffix == ".json" and path.exists()):
        builtin = LABELSET_DIR / f"{key.lower()}.json"
        if builtin.exists():
            path = builtin
        elif path.exists() and path.is_file():
            pass
        else:
            raise ValueError(
                f"unknown label set '{key}': use one of {', '.join(available_label_sets())} "
                f"or the path of a JSON label-set file"
            )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"label set file {path} could not be read as JSON: {e}") from e
    return parse_label_set(data, str(path))
