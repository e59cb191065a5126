"""Label map -> (text prompts, binary targets) sampling.

A multi-label map (one integer per voxel, indices of a label set) becomes, for one training step,
K text prompts and a ``[B, K, *spatial]`` binary target: one channel per prompt, the voxels of that
structure, or all zeros when the structure is absent from the crop ("it is not here").
The same prompts are used for every crop in the batch (the model takes one prompt list per forward).

With ``variety`` (the default of :class:`TrainConfig`, ``prompt_variety``) each label is asked for by one
phrasing drawn per step: its canonical prompt (a ``canonical_fraction`` of the time) or its name or a
synonym wrapped in a template ("segment the {}", "{} on this MRI", ...); negative prompts (structures
of the built-in vocabulary that are none of the set's labels, ``lib/vocabulary.py``) get empty targets.
A ``typo_fraction`` of the names, synonyms and absent names is drawn with one typing error (:func:`add_typo`),
so that a misspelt structure still means that structure and a misspelt absent one is still absent.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from .config import TrainConfig

DEFAULT_CANONICAL_FRACTION = TrainConfig.canonical_prompt_fraction  # one default: TrainConfig's
NAME_FRACTION = 0.25  # of the non-canonical draws: the label's name, else one of its synonyms
BARE_FRACTION = 0.5  # of those: the phrase alone, else wrapped in a template


@dataclass(frozen=True)
class LabelEntry:
    """One label to train: its index in the label map, canonical prompt, other phrasings.

    ``templates`` (the label set's, shared by its entries) wrap the name and synonyms; ``avoid`` lists
    the set's overlapping structures, never drawn as absent prompts.
    """

    name: str
    index: int
    prompt: str
    synonyms: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()


def entries_from_label_set(label_set, names: Sequence[str] | None = None) -> list[LabelEntry]:
    """Label entries (name, map index, prompt, synonyms, templates) of a ``lib.labelsets.LabelSet``;
    ``names`` selects a subset."""
    labels = {n: int(i) for n, i in dict(label_set.labels).items() if n.lower() != "background" and int(i) != 0}
    prompts = dict(label_set.prompts)
    synonyms = dict(label_set.synonyms)
    templates = tuple(label_set.prompt_templates)
    avoid = tuple(label_set.overlapping)
    entries = [LabelEntry(n, i, prompts.get(n) or n, tuple(synonyms.get(n, ())), templates, avoid)
               for n, i in sorted(labels.items(), key=lambda kv: kv[1])]
    return select_entries(entries, names)


def apply_template(template: str, phrase: str) -> str:
    """``"segment the {}"`` + ``"the spleen"`` -> ``"segment the spleen"`` (no doubled article)."""
    text = template.replace("{}", phrase)
    return " ".join(text.replace("the the ", "the ").split())


def expand_phrasings(entry: LabelEntry) -> list[str]:
    """Every text :func:`sample_prompts` can ask for this label with (``variety`` on)."""
    out = [entry.prompt]
    for phrase in (entry.name, *entry.synonyms):
        out.extend(apply_template(t, phrase) for t in ("{}", *entry.templates))
    return list(dict.fromkeys(out))


TYPO_MIN_WORD = 4  # shorter words ("of", "the", "left") keep their spelling


def add_typo(phrase: str, rng: random.Random) -> str:
    """One typing error in one word of 4+ letters, never its first letter: a letter dropped, doubled,
    swapped with the next, or replaced by its neighbour on the keyboard row ("hippocampus" -> "hipocampus",
    "hippocapmus"). A phrase without such a word comes back unchanged."""
    words = phrase.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= TYPO_MIN_WORD and w.isalpha()]
    if not candidates:
        return phrase
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 1)  # a letter inside the word: [1, len-2]
    kind = rng.randrange(4)
    if kind == 2 and w[j] == w[j + 1]:
        kind = 0  # swapping "pp" would change nothing: drop one instead
    if kind == 0:
        w = w[:j] + w[j + 1:]  # dropped
    elif kind == 1:
        w = w[:j] + w[j] + w[j:]  # doubled
    elif kind == 2:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2:]  # swapped with the next letter
    else:
        w = w[:j] + _keyboard_neighbour(w[j], rng) + w[j + 1:]  # mistyped
    words[i] = w
    return " ".join(words)


_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbour(letter: str, rng: random.Random) -> str:
    for row in _KEYBOARD_ROWS:
        k = row.find(letter.lower())
        if k >= 0:
            near = [row[m] for m in (k - 1, k + 1) if 0 <= m < len(row)]
            return rng.choice(near)
    return letter


def draw_phrasing(entry: LabelEntry, rng: random.Random, canonical_fraction: float,
                  typo_fraction: float = 0.0) -> str:
    """The canonical prompt (``canonical_fraction`` of draws), else the name (a quarter of the rest: what users
    type most) or a synonym, misspelt once in a ``typo_fraction`` of draws, as typed (half of the time) or in
    a random template."""
    if rng.random() < canonical_fraction:
        return entry.prompt
    phrase = entry.name if not entry.synonyms or rng.random() < NAME_FRACTION else rng.choice(entry.synonyms)
    if typo_fraction and rng.random() < typo_fraction:
        phrase = add_typo(phrase, rng)
    if rng.random() < BARE_FRACTION:
        return phrase
    return apply_template(rng.choice(entry.templates or ("{}",)), phrase)


@functools.lru_cache(maxsize=16)
def _vocabulary_pool(entries: tuple[LabelEntry, ...]) -> tuple[str, ...]:
    from lib.vocabulary import absent_phrases, humanise

    own = {p for e in entries for p in (e.name, e.prompt, *e.synonyms)}
    avoid = {a for e in entries for a in e.avoid}
    return tuple(absent_phrases([humanise(e.name) for e in entries], own, avoid))


def negative_pool(entries: Sequence[LabelEntry], cfg: Any) -> list[str]:
    """Absent prompts of a run: ``cfg.negative_prompts`` if given, else (``cfg.negative_vocabulary``) the
    built-in vocabulary minus the phrasings of ``entries`` (``lib.vocabulary.absent_phrases``)."""
    if cfg.negative_prompts:
        return list(cfg.negative_prompts)
    if cfg.negative_vocabulary and cfg.negative_prompts_per_step > 0:
        return list(_vocabulary_pool(tuple(entries)))
    return []


def prompt_options(entries: Sequence[LabelEntry], cfg: Any) -> dict:
    """The keyword arguments of :func:`sample_prompts` that a :class:`TrainConfig` sets."""
    return {"max_prompts": cfg.max_prompts, "min_absent": cfg.min_absent,
            "negative_prompts": negative_pool(entries, cfg),
            "negative_prompts_per_step": cfg.negative_prompts_per_step,
            "variety": bool(cfg.prompt_variety),
            "canonical_fraction": float(cfg.canonical_prompt_fraction),
            "typo_fraction": float(cfg.typo_fraction)}


def phrasing_metadata(entries: Sequence[LabelEntry], cfg: Any) -> dict:
    """What a checkpoint stores about its training text (read back by ``lib.labelsets.trained_phrasings``)."""
    variety = bool(cfg.prompt_variety)
    negatives = negative_pool(entries, cfg) if cfg.negative_prompts_per_step > 0 else []
    templates = list(dict.fromkeys(t for e in entries for t in e.templates)) if variety else []
    return {
        "trained_prompts": {e.name: list(dict.fromkeys([e.prompt, *((e.name, *e.synonyms) if variety else ())]))
                            for e in entries},
        "prompt_templates": templates,
        "negative_vocabulary_size": len(negatives),
    }


def entries_from_dict(labels: dict, prompts: dict | None = None) -> list[LabelEntry]:
    prompts = prompts or {}
    return [LabelEntry(n, int(i), prompts.get(n) or n)
            for n, i in sorted(labels.items(), key=lambda kv: int(kv[1])) if int(i) != 0]


def select_entries(entries: Sequence[LabelEntry], names: Sequence[str] | None) -> list[LabelEntry]:
    if not names:
        return list(entries)
    by_name = {e.name.lower(): e for e in entries}
    by_prompt = {e.prompt.lower(): e for e in entries}
    chosen = []
    for n in names:
        key = str(n).strip().lower()
        e = by_name.get(key) or by_prompt.get(key)
        if e is None:
            raise ValueError(f"label {n!r} is not in the label set (labels: {', '.join(x.name for x in entries)})")
        if e not in chosen:
            chosen.append(e)
    return chosen


def present_indices(label: torch.Tensor) -> set[int]:
    """Label indices (>0) present anywhere in a label tensor."""
    values = torch.unique(label.detach().to("cpu").long())
    return {int(v) for v in values.tolist() if int(v) > 0}


def sample_prompts(
    label: torch.Tensor,
    entries: Sequence[LabelEntry],
    max_prompts: int = 0,
    min_absent: int = 1,
    negative_prompts: Sequence[str] = (),
    negative_prompts_per_step: int = 0,
    rng: random.Random | None = None,
    shuffle: bool = True,
    variety: bool = False,
    canonical_fraction: float = DEFAULT_CANONICAL_FRACTION,
    typo_fraction: float = 0.0,
) -> tuple[list[str], torch.Tensor, list[str]]:
    """Choose the prompts of one step and build their binary targets.

    Args:
        label: ``[B, 1, *spatial]`` (or ``[B, *spatial]``) integer label map of the crops.
        entries: the label set's entries to train.
        max_prompts: prompts per step (0 = all entries). When smaller than the set, labels present
            in the batch are favoured but at least ``min_absent`` absent labels are kept, so every
            step teaches both "segment this" and "it is not here".
        negative_prompts: extra prompts for structures that never occur in this data (targets all zero).
        negative_prompts_per_step: how many of those to add to each step.
        variety: ask for each label by a phrasing drawn with :func:`draw_phrasing` (else its canonical
            prompt) and wrap negative prompts in the same templates.
        typo_fraction: with ``variety``, share of phrasings (names, synonyms, negatives) misspelt once.

    Returns:
        ``(prompts, target [B, K, *spatial] float32, names)``; ``names[k]`` is the label name of
        prompt k (the prompt itself for a negative prompt).
    """
    rng = rng or random
    if label.dim() == 5:
        if label.shape[1] != 1:
            raise ValueError(f"expected a one-channel label map [B,1,D,H,W], got {tuple(label.shape)}")
        label_map = label[:, 0]
    elif label.dim() == 4:
        label_map = label
    else:
        raise ValueError(f"expected a label map [B,1,D,H,W] or [B,D,H,W], got {tuple(label.shape)}")
    present_set = present_indices(label_map)
    present = [e for e in entries if e.index in present_set]
    absent = [e for e in entries if e.index not in present_set]

    if max_prompts and max_prompts < len(entries):
        n_absent = min(len(absent), max(min_absent, max_prompts - len(present)))
        n_absent = min(n_absent, max_prompts)
        n_present = min(len(present), max_prompts - n_absent)
        chosen = rng.sample(present, n_present) + rng.sample(absent, n_absent)
    else:
        chosen = list(entries)
    if shuffle:
        rng.shuffle(chosen)

    label_long = label_map.long()
    targets = [(label_long == e.index) for e in chosen]
    prompts = [draw_phrasing(e, rng, canonical_fraction, typo_fraction) if variety else e.prompt for e in chosen]
    names = [e.name for e in chosen]

    if negative_prompts and negative_prompts_per_step > 0:
        own = {p.lower() for e in entries for p in (e.prompt, e.name, *e.synonyms)}
        pool = [p for p in negative_prompts if p.lower() not in own]
        templates = next((e.templates for e in entries if e.templates), ("{}",))
        for p in rng.sample(pool, min(len(pool), negative_prompts_per_step)):
            typed = add_typo(p, rng) if variety and typo_fraction and rng.random() < typo_fraction else p
            prompts.append(apply_template(rng.choice(templates), typed) if variety else p)
            names.append(p)
            targets.append(torch.zeros_like(label_long, dtype=torch.bool))

    target = torch.stack(targets, dim=1).float() if targets else label_long.new_zeros((label_long.shape[0], 0,
                                                                                      *label_long.shape[1:])).float()
    return prompts, target, names


def label_map_to_binary(label: torch.Tensor, entries: Iterable[LabelEntry]) -> torch.Tensor:
    """``[1, *spatial]`` or ``[*spatial]`` label map -> ``[K, *spatial]`` bool masks in ``entries`` order."""
    lab = label[0] if label.dim() == 4 else label
    lab = lab.long()
    return torch.stack([lab == e.index for e in entries], dim=0)
