"""How close a typed prompt is to what the served weights were trained with (cosine of sentence embeddings).

:class:`PromptMatcher` embeds every known phrasing once (``{label name: [phrasings]}``: the label names, their
prompts and synonyms the weights were trained with) with the served model's frozen text encoder, and for a prompt
returns the nearest known phrasing, its label, the cosine similarity and the nearest labels.  No image work: one
text-encoder pass per new prompt (the encoder caches its prompts, and the network encodes the same text anyway).

A prompt equal to a known phrasing up to case, ``_``/``-`` and spacing scores exactly 1.0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

# DEFAULT_MIN_SIMILARITY, measured with the MiniLM sentence encoder (docs/app.md, benchmarks/bench_prompt_similarity.py):
# paraphrases and typos of the hippocampus labels score >= 0.62, structures the weights never saw (liver, amygdala,
# brainstem, ...) <= 0.58.
from lib.defaults import DEFAULT_MIN_SIMILARITY  # noqa: F401



def normalise(text: str) -> str:
    """Lower case, ``_``/``-`` as spaces, one space between words (as ``lib/infers/prompt_parsing.py`` routes labels)."""
    return " ".join(re.sub(r"[_\-]+", " ", str(text)).lower().split())


Embed = Callable[[List[str]], torch.Tensor]  # texts -> [K, C] sentence embeddings


@dataclass(frozen=True)
class PromptMatch:
    """The nearest known phrasing of one prompt: ``score`` (cosine, 1.0 = a known phrasing), its ``label``,
    and ``top``: the nearest labels, best first, each with its best phrasing's score."""

    prompt: str
    score: float
    nearest: str
    label: str
    top: Tuple[Tuple[str, float], ...] = field(default=())

    def to_json(self) -> Dict[str, Any]:
        return {"score": round(self.score, 4), "nearest": self.nearest, "label": self.label,
                "top_labels": [{"label": n, "score": round(s, 4)} for n, s in self.top]}


class PromptMatcher:
    """Nearest known phrasing by cosine similarity of sentence embeddings (see the module docstring)."""

    def __init__(self, phrasings: Mapping[str, Sequence[str]], embed: Embed, top_k: int = 3):
        self.top_k = int(top_k)
        self._label_of: Dict[str, str] = {}  # normalised phrasing -> label (the first label that lists it)
        self._text_of: Dict[str, str] = {}  # normalised phrasing -> phrasing as written
        for label, texts in phrasings.items():
            for text in [label, *texts]:
                key = normalise(text)
                if key and key not in self._label_of:
                    self._label_of[key], self._text_of[key] = label, str(text).strip()
        if not self._label_of:
            raise ValueError("a PromptMatcher needs at least one known phrasing")
        self._embed = embed
        self._keys = list(self._label_of)
        self._labels = list(dict.fromkeys(self._label_of.values()))
        self._label_index = torch.tensor([self._labels.index(self._label_of[k]) for k in self._keys])
        self._matrix = self._unit(embed(self._keys))  # [N, C], rows of norm 1

    @property
    def labels(self) -> List[str]:
        return list(self._labels)

    @property
    def phrasings(self) -> Dict[str, List[str]]:
        """``{label: [known phrasings as written]}``."""
        out: Dict[str, List[str]] = {label: [] for label in self._labels}
        for key, label in self._label_of.items():
            out[label].append(self._text_of[key])
        return out

    @staticmethod
    def _unit(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.detach().float().cpu(), dim=-1)

    def match(self, prompt: str) -> PromptMatch:
        return self.match_many([prompt])[0]

    def match_many(self, prompts: Sequence[str]) -> List[PromptMatch]:
        """One :class:`PromptMatch` per prompt (unknown prompts embedded in one batch)."""
        keys = [normalise(p) for p in prompts]
        unknown = list(dict.fromkeys(k for k in keys if k not in self._label_of))
        sims: Dict[str, torch.Tensor] = {}
        if unknown:
            for key, row in zip(unknown, self._unit(self._embed(unknown)) @ self._matrix.T):
                sims[key] = row
        for key in set(keys) - set(unknown):  # a known phrasing: its stored embedding
            sims[key] = self._matrix[self._keys.index(key)] @ self._matrix.T
        return [self._result(p, k, sims[k]) for p, k in zip(prompts, keys)]

    def _result(self, prompt: str, key: str, sim: torch.Tensor) -> PromptMatch:
        if key in self._label_of:  # exactly a known phrasing: 1.0, whatever the float rounding
            sim = sim.clone()
            sim[self._keys.index(key)] = 2.0
        per_label = torch.full((len(self._labels),), -1.0).scatter_reduce(0, self._label_index, sim, reduce="amax")
        order = torch.argsort(per_label, descending=True)[: self.top_k]
        best = int(torch.argmax(sim))
        return PromptMatch(prompt=prompt, score=float(sim[best].clamp(-1.0, 1.0)), nearest=self._text_of[self._keys[best]],
                           label=self._label_of[self._keys[best]],
                           top=tuple((self._labels[i], float(per_label[i].clamp(-1.0, 1.0))) for i in order.tolist()))


def encoder_embed(text_encoder: Any) -> Embed:
    """The sentence embedding of a ``lib.model.TextEncoder`` (``TextFeatures.sentence``) as an :data:`Embed`."""
    return lambda texts: text_encoder(list(texts)).sentence
