"""How sure the answer is, per prompt: ``found``, ``confidence`` and ``prompt_similarity`` (issue 25).

* ``prompt_similarity``: cosine similarity of the prompt's sentence embedding (the served model's frozen text
  encoder) to the nearest phrasing the served weights were trained with (``lib/prompt_matching.py``), that
  phrasing and its label, and the nearest labels;
* below ``--conf min_prompt_similarity`` the server still answers and the response's ``warnings`` names the
  prompt and the nearest labels ("did you mean ..."); with ``--conf strict_prompts true`` it answers 422 with
  that message and ``nearest_labels`` instead (:class:`UnknownPromptError`, before any image work);
* ``found``: the written mask of the prompt is non-empty; ``confidence``: the mean foreground probability inside
  it (on the network's grid; None when empty).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from lib.errors import Unprocessable
from lib.labelsets import LabelSet
from lib.labelsets import trained_phrasings
from lib.prompt_matching import DEFAULT_MIN_SIMILARITY, PromptMatch, PromptMatcher, encoder_embed


Prompt = Tuple[str, int, str]  # (name in the response, value in the mask, text given to the model)


class UnknownPromptError(Unprocessable):
    """``strict_prompts``: a prompt too far from everything the served weights know (with the nearest labels)."""

    def __init__(self, message: str, nearest_labels: List[str], similarity: Dict[str, Any]):
        super().__init__(message, nearest_labels=nearest_labels, prompt_similarity=similarity)


@dataclass(frozen=True)
class PromptChecks:
    """The ``--conf`` settings: ``min_prompt_similarity`` and ``strict_prompts``."""

    min_similarity: float = DEFAULT_MIN_SIMILARITY
    strict: bool = False


def _or_list(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


class PromptReporter:
    """Per-prompt report of one inference; the matcher is built once per served weights version."""

    def __init__(self, label_set: LabelSet, checks: Optional[PromptChecks] = None):
        self.label_set = label_set
        self.checks = checks or PromptChecks()
        self._matcher: Optional[Tuple[str, PromptMatcher]] = None
        self._lock = threading.Lock()

    def phrasings(self, checkpoint_meta: Optional[Mapping[str, Any]]) -> Dict[str, List[str]]:
        """``{label: [phrasings]}`` the weights were trained with (``checkpoint_meta``: the checkpoint's ``extra``)."""
        return trained_phrasings(checkpoint_meta, self.label_set)

    def synonyms(self, checkpoint_meta: Optional[Mapping[str, Any]]) -> Dict[str, List[str]]:
        """For ``/info``: per label of the served set, its other phrasings (not the name, not the prompt)."""
        known = self.phrasings(checkpoint_meta)
        out: Dict[str, List[str]] = {}
        for entry in self.label_set.entries:
            skip = {entry["name"].lower(), str(entry.get("prompt", "")).lower()}
            texts = [*known.get(entry["name"], []), *(entry.get("synonyms") or [])]
            out[entry["name"]] = [t for t in dict.fromkeys(texts) if t.lower() not in skip]
        return out

    def matcher(self, model: Any, version: str, checkpoint_meta: Optional[Mapping[str, Any]]) -> PromptMatcher:
        with self._lock:
            if self._matcher is None or self._matcher[0] != version:
                self._matcher = (version, PromptMatcher(self.phrasings(checkpoint_meta), encoder_embed(model.text_encoder)))
            return self._matcher[1]

    def check(self, prompts: Sequence[Prompt], matcher: PromptMatcher) -> Tuple[Dict[str, PromptMatch], List[str]]:
        """(``{name: match}``, warnings) for the prompts; UnknownPromptError when strict and one is too far."""
        names = [name for name, _, _ in prompts]  # a label's name (known), or the free text as typed
        matches = dict(zip(names, matcher.match_many(names)))
        warnings = []
        for name, m in matches.items():
            if m.score >= self.checks.min_similarity:
                continue
            nearest = [label for label, _ in m.top]
            message = (f"the prompt '{name}' is not like anything the served weights were trained with (similarity "
                       f"{m.score:.2f} < min_prompt_similarity {self.checks.min_similarity:.2f}; nearest: '{m.nearest}'): "
                       f"did you mean {_or_list(nearest)}?")
            if self.checks.strict:
                raise UnknownPromptError(message + " (strict_prompts: nothing was segmented)", nearest, m.to_json())
            warnings.append(message + " The mask may be another structure or empty.")
        return matches, warnings

    @staticmethod
    def fields(prompts: Sequence[Prompt], matches: Mapping[str, PromptMatch],
               confidences: Mapping[int, Optional[float]]) -> Dict[str, Any]:
        """``confidence`` and ``prompt_similarity`` per name (``confidences``: 1-based prompt position -> mean probability)."""
        return {
            "confidence": {name: (None if confidences.get(k) is None else round(float(confidences[k]), 4))
                           for k, (name, _, _) in enumerate(prompts, start=1)},
            "prompt_similarity": {name: matches[name].to_json() for name, _, _ in prompts if name in matches},
        }

    @staticmethod
    def found(result: Dict[str, Any]) -> None:
        """``found`` per name from the written mask's ``voxels``; a prompt with no voxel left has no confidence."""
        voxels = result.get("voxels") or {}
        result["found"] = {name: int(n) > 0 for name, n in voxels.items()}
        confidence = result.get("confidence")
        if isinstance(confidence, dict):
            for name, found in result["found"].items():
                if not found:
                    confidence[name] = None
