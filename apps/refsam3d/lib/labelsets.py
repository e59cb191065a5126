"""Label sets: small JSON files mapping label name -> index -> text prompt.

A label set is what the viewers list (``/info``), what automatic segmentation segments, and what
``label_prompt`` indices refer to.  Built-in sets live in ``lib/labelsets/<name>.json``; any JSON
file of the same shape can be passed with ``--conf label_set /path/to/set.json``::

    {"name": "msd_hippocampus", "description": "...", "modality": "MR",
     "target_spacing": [1.0, 1.0, 1.0],
     "roi_size": {"small": [48, 48, 48], "vit_b": [128, 128, 128]},
     "ct_window": [-1000, 1000],                       # optional, CT only (HU mapped to [0, 1])
     "prompt_templates": ["segment the {}", ...],     # optional: wrappers of names/synonyms in training
     "overlapping_structures": ["temporal lobe", ...],  # optional: never drawn as absent prompts (lib/vocabulary.py)
     "labels": [{"name": "anterior hippocampus", "index": 1, "prompt": "...",
                 "synonyms": ["hippocampal head", ...]}, ...]}   # optional: other phrasings of the label

``synonyms`` are what training draws among (with the name and the prompt, see ``lib/training/prompts.py``)
and what the server compares free text with; checkpoints store the phrasings they were trained with
(:func:`trained_phrasings`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from lib.defaults import DEFAULT_CT_WINDOW, MODALITIES  # noqa: F401  (re-exported)
from lib.parsing import parse_modality, parse_size

LABELSET_DIR = Path(__file__).resolve().parent / "labelsets"
DEFAULT_ROI = {"small": (64, 64, 64), "vit_b": (128, 128, 128)}
MAX_PHRASE_CHARS = 200
# Wrappers of a name or synonym ("{}") drawn by training when a label set names none of its own.
DEFAULT_TEMPLATES = ("{}", "the {}", "segment the {}", "segment {}", "where is the {}", "find the {}",
                     "show the {}", "outline the {}", "mask of the {}", "{} segmentation", "label the {}")
# Modality templates name what a reader adds about the scan: its sequence or phase and its view. Without them a
# prompt with a trailing "on T1" drifted to the other label (issue 25, round 2).
MODALITY_TEMPLATES = {"CT": ("{} on this CT", "{} in the CT scan", "CT of the {}", "{} on contrast-enhanced CT",
                             "{} on non-contrast CT", "{} in the portal venous phase", "{} in the axial CT slices",
                             "{} on coronal CT", "abdominal CT, {}"),
                      "MR": ("{} on this MRI", "{} in the MR image", "MRI of the {}", "{} on the T1-weighted image",
                             "{} on T2-weighted MRI", "{} on FLAIR", "{} on MPRAGE", "{} in the axial slices",
                             "{} on coronal MRI", "T1 MRI, {}")}


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
    templates: Tuple[str, ...] = ()  # the set's own "prompt_templates"; empty = the defaults for its modality
    overlapping: Tuple[str, ...] = ()  # structures containing/overlapping its labels: never trained as absent

    @property
    def labels(self) -> Dict[str, int]:
        """name -> index, sorted by index (MONAI Label's ``labels`` format)."""
        return {e["name"]: int(e["index"]) for e in sorted(self.entries, key=lambda e: int(e["index"]))}

    @property
    def prompts(self) -> Dict[str, str]:
        """name -> text prompt."""
        return {e["name"]: e["prompt"] for e in sorted(self.entries, key=lambda e: int(e["index"]))}

    @property
    def synonyms(self) -> Dict[str, List[str]]:
        """name -> synonyms (possibly empty), sorted by index."""
        return {e["name"]: list(e.get("synonyms", [])) for e in sorted(self.entries, key=lambda e: int(e["index"]))}

    @property
    def prompt_templates(self) -> Tuple[str, ...]:
        """Templates training wraps names and synonyms in (the set's own, else the defaults for its modality)."""
        return self.templates or DEFAULT_TEMPLATES + MODALITY_TEMPLATES.get(self.modality, ())

    def phrasings(self, name: str) -> List[str]:
        """The label's prompt, name and synonyms (in that order, no duplicates)."""
        for e in self.entries:
            if e["name"].lower() == str(name).strip().lower():
                return _unique([e["prompt"], e["name"], *e.get("synonyms", [])])
        raise KeyError(f"label '{name}' is not in label set '{self.name}'")

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
        extra = {"prompt_templates": list(self.templates)} if self.templates else {}
        if self.overlapping:
            extra["overlapping_structures"] = list(self.overlapping)
        return {
            **extra,
            "name": self.name,
            "description": self.description,
            "modality": self.modality,
            "target_spacing": list(self.target_spacing),
            "ct_window": list(self.ct_window),
            "roi_size": {k: list(v) for k, v in self.roi_sizes.items()},
            "labels": [dict(e) for e in sorted(self.entries, key=lambda e: int(e["index"]))],
        }


def _triple(value: Any, what: str, source: str, cast=float) -> tuple:
    try:
        out = parse_size(value, 3, cast)
    except ValueError as e:
        raise ValueError(f"label set {source}: '{what}' {e}") from None
    if out is None:
        raise ValueError(f"label set {source}: '{what}' must be one positive number or 3, got {value!r}")
    return out


def parse_label_set(data: Dict[str, Any], source: str = "<dict>") -> LabelSet:
    """Validate a label-set mapping; ValueError with a readable message on any problem."""
    if not isinstance(data, dict):
        raise ValueError(f"label set {source}: expected a JSON object")
    name = str(data.get("name") or Path(source).stem)
    try:
        modality = parse_modality(data.get("modality", "CT"))
    except ValueError as e:
        raise ValueError(f"label set {source}: modality {e}") from None
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
        entry = {"name": lname, "index": index, "prompt": prompt}
        if "synonyms" in item:
            entry["synonyms"] = _phrase_list(item["synonyms"], f"label '{lname}' synonyms", source)
        entries.append(entry)
    _check_phrasings_unique(entries, source)
    templates = data.get("prompt_templates", [])
    for t in _phrase_list(templates, "prompt_templates", source):
        if t.count("{}") != 1:
            raise ValueError(f"label set {source}: every prompt template needs exactly one '{{}}' "
                             f"(where the name goes), got {t!r}")
    return LabelSet(
        name=name,
        description=str(data.get("description", "")),
        modality=modality,
        target_spacing=spacing,
        entries=entries,
        roi_sizes=roi,
        ct_window=(float(window[0]), float(window[1])),
        path=source,
        templates=tuple(str(t).strip() for t in templates),
        overlapping=tuple(_phrase_list(data.get("overlapping_structures", []), "overlapping_structures", source)),
    )


def _unique(items) -> List[str]:
    seen, out = set(), []
    for item in items:
        if item.lower() not in seen:
            seen.add(item.lower())
            out.append(item)
    return out


def _phrase_list(value: Any, what: str, source: str) -> List[str]:
    """A list of non-empty, distinct strings of at most MAX_PHRASE_CHARS characters, or ValueError."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"label set {source}: {what} must be a list of strings, got {value!r}")
    out = [v.strip() for v in value]
    for v in out:
        if not v or len(v) > MAX_PHRASE_CHARS:
            raise ValueError(f"label set {source}: {what}: every entry must have 1..{MAX_PHRASE_CHARS} "
                             f"characters, got {v!r}")
    if len({v.lower() for v in out}) != len(out):
        raise ValueError(f"label set {source}: {what} lists the same phrase twice: {out!r}")
    return out


def _check_phrasings_unique(entries: List[Dict[str, Any]], source: str) -> None:
    """A name, prompt or synonym may belong to one label only (else text could not say which one is meant)."""
    owner: Dict[str, str] = {}
    for e in entries:
        for phrase in {p.lower() for p in [e["name"], e["prompt"], *e.get("synonyms", [])]}:
            if owner.setdefault(phrase, e["name"]) != e["name"]:
                raise ValueError(f"label set {source}: the phrase {phrase!r} is given for both "
                                 f"'{owner[phrase]}' and '{e['name']}'")


def trained_phrasings(checkpoint_meta: Dict[str, Any] | None, label_set: LabelSet) -> Dict[str, List[str]]:
    """label name -> the phrasings the weights were trained with (prompt, name, synonyms).

    ``checkpoint_meta``: a checkpoint's ``extra`` (or the whole checkpoint dict). Its ``trained_prompts``
    is used for the labels it lists; labels it does not list (older checkpoints store none) fall back
    to the label set's prompt, name and synonyms.
    """
    meta = dict(checkpoint_meta or {})
    if isinstance(meta.get("extra"), dict) and "state_dict" in meta:
        meta = meta["extra"]
    stored = meta.get("trained_prompts")
    stored = {str(k).lower(): v for k, v in stored.items()} if isinstance(stored, dict) else {}
    out: Dict[str, List[str]] = {}
    for name in label_set.labels:
        known = stored.get(name.lower())
        if isinstance(known, list) and known:
            out[name] = _unique([str(p) for p in known])
        else:
            out[name] = label_set.phrasings(name)
    return out


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
