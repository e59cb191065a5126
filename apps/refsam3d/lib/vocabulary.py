"""The built-in anatomical vocabulary training draws ABSENT (negative) prompts from.

The vocabulary is ``lib/anatomy_vocabulary.json`` (brain, head and neck, thorax, abdominal and pelvic
structures, bones and muscles, lesions) plus the names and synonyms of every shipped label set
(TotalSegmentator's classes among them). For one label set, :func:`absent_vocabulary` keeps the
phrases that cannot name one of its labels: not a name, prompt or synonym of a label, sharing no word
with a label's name ("liver tumour" is never absent for a set with "liver": it lies inside the liver),
and not listed in the set's ``overlapping_structures`` (structures that contain or overlap its labels,
e.g. "temporal lobe" for the hippocampus).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

VOCABULARY_FILE = Path(__file__).resolve().parent / "anatomy_vocabulary.json"
# Words that say where or which, not what: "left kidney" and "kidney" name the same organ for the overlap test.
_NOT_CONTENT = {"left", "right", "anterior", "posterior", "superior", "inferior", "upper", "lower", "middle", "the",
                "of", "and", "a", "an", "in", "on", "part", "proper", "whole", "l", "r", "lt", "rt", "gland", "lobe"}


def normalise(phrase: str) -> str:
    """Lower case, ``_`` as a space, single spaces: the form phrases are compared in."""
    return " ".join(str(phrase).replace("_", " ").lower().split())


def humanise(name: str) -> str:
    """TotalSegmentator-style ``kidney_left`` -> ``left kidney``; other names only normalised."""
    words = normalise(name).split()
    side = [w for w in words if w in ("left", "right")]
    return " ".join(side + [w for w in words if w not in ("left", "right")])


def _content_stems(phrase: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", normalise(phrase))
    return {w[:6] if len(w) > 6 else w.rstrip("s") for w in words if w not in _NOT_CONTENT and not w.isdigit()}


@functools.lru_cache(maxsize=1)
def anatomy_vocabulary() -> tuple[str, ...]:
    """Every phrase of the built-in vocabulary (the JSON file and every shipped label set), normalised, sorted."""
    from lib.labelsets import available_label_sets, load_label_set

    groups = json.loads(VOCABULARY_FILE.read_text())["groups"]
    phrases = {normalise(p) for group in groups.values() for p in group}
    for name in available_label_sets():
        label_set = load_label_set(name)
        for label in label_set.labels:
            phrases.add(humanise(label))
            phrases.update(normalise(s) for s in label_set.synonyms[label])
    return tuple(sorted(p for p in phrases if p))


def own_phrasings(label_set) -> set[str]:
    """Normalised names, prompts and synonyms of a label set's labels (and their humanised names)."""
    own = set()
    for label in label_set.labels:
        own.update(normalise(p) for p in label_set.phrasings(label))
        own.add(humanise(label))
    return own


def absent_vocabulary(label_set, vocabulary: Iterable[str] | None = None) -> list[str]:
    """The vocabulary phrases that name none of ``label_set``'s labels: what training may draw as absent."""
    names = [humanise(n) for n in label_set.labels]
    return absent_phrases(names, own_phrasings(label_set), label_set.overlapping, vocabulary)


def absent_phrases(names: Sequence[str], own: Iterable[str], overlapping: Iterable[str] = (),
                   vocabulary: Iterable[str] | None = None) -> list[str]:
    """Vocabulary minus ``own`` phrasings, minus ``overlapping`` ones, minus phrases sharing a word with ``names``."""
    blocked = {normalise(p) for p in own} | {normalise(p) for p in overlapping}
    stems = set().union(*(_content_stems(n) for n in names)) if names else set()
    pool = anatomy_vocabulary() if vocabulary is None else [normalise(v) for v in vocabulary]
    return [p for p in pool if p not in blocked and not (_content_stems(p) & stems)]

