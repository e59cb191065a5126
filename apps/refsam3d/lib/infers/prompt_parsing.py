"""Which prompts an inference request asks for, and the value each one is written with in the mask.

* ``text_prompt`` that is a label of the set (its name or its text prompt; any case; ``_``, ``-`` and runs
  of spaces alike) is that label: written with the label's own value, named by the label;
* any other ``text_prompt`` is *free text*: written with :func:`free_text_value` (255, or the largest index
  + 1 for sets that use 255), which ``/info`` declares as the label :data:`FREE_TEXT_NAME`, so that viewers
  naming segments from ``/info`` (OHIF) show it as "free text prompt", never as another structure;
* ``label_prompt``: label indices or names of the set;
* both: both are answered, each under its own value; neither: every label of the set.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from lib.labelsets import LabelSet
from lib.errors import Unprocessable
from lib.settings import AppSettings

FREE_TEXT_NAME = "free text prompt"
MAX_LABEL_PROMPTS = 256

Prompt = Tuple[str, int, str]  # (name in the response, value in the mask, text given to the model)


def free_text_value(label_set: LabelSet) -> int:
    """The mask value of free text: 255 (fits OHIF's uint8 masks), or one above the set's largest index."""
    return max(255, max(label_set.labels.values()) + 1)


def normalise(text: str) -> str:
    """Lower case, ``_`` and ``-`` as spaces, one space between words: "Kidney_Right" == "kidney right"."""
    return " ".join(re.sub(r"[_\-]+", " ", str(text)).lower().split())


class PromptParser:
    """Turns a request's ``text_prompt`` / ``label_prompt`` into :data:`Prompt` tuples (``Unprocessable``)."""

    def __init__(self, label_set: LabelSet, max_prompt_chars: int = AppSettings.max_prompt_chars):
        self.label_set = label_set
        self.max_prompt_chars = int(max_prompt_chars)
        self.free_value = free_text_value(label_set)
        self._by_text: Dict[str, str] = {}
        for name, prompt in label_set.prompts.items():  # names win over another label's identical prompt
            self._by_text.setdefault(normalise(prompt), name)
        for name in label_set.labels:
            self._by_text[normalise(name)] = name

    def declared_labels(self) -> Dict[str, int]:
        """The labels ``/info`` declares: the set's, then the free-text label."""
        return {**self.label_set.labels, FREE_TEXT_NAME: self.free_value}

    def parse(self, request: Dict[str, Any]) -> Tuple[str, List[Prompt]]:
        """(mode, prompts): mode is ``text``, ``labels``, ``text+labels`` or ``auto``."""
        text = self._text(request.get("text_prompt"))
        items = self._label_prompt_items(request.get("label_prompt"))
        chosen: List[Prompt] = []
        if text is not None:
            chosen.append(self._text_prompt(text))
        for item in items:
            name = self._resolve_label(item)
            if name == FREE_TEXT_NAME:
                if text is None:
                    raise Unprocessable(
                        f"label_prompt asks for '{FREE_TEXT_NAME}' ({self.free_value}) but there is no text_prompt: "
                        "type the text to segment in text_prompt (OHIF: Options / Configurations)"
                    )
                continue  # the free text is already answered
            if name not in [c[0] for c in chosen]:
                chosen.append((name, self.label_set.labels[name], self.label_set.prompts[name]))
        if text is not None and items:
            return "text+labels", chosen
        if text is not None:
            return "text", chosen
        if chosen:
            return "labels", chosen
        return "auto", [(n, i, self.label_set.prompts[n]) for n, i in self.label_set.labels.items()]

    def free_text(self, prompts: List[Prompt]) -> Optional[Dict[str, Any]]:
        """``{"name", "value", "prompt"}`` of the free-text prompt among ``prompts``, if there is one."""
        for name, value, text in prompts:
            if value == self.free_value:
                return {"name": FREE_TEXT_NAME, "value": value, "prompt": text}
        return None

    # ------------------------------------------------------------------ parts
    def _text(self, text: Any) -> Optional[str]:
        if text is None or text == "":
            return None  # 3D Slicer sends every option: an untouched text field arrives as ""
        if not isinstance(text, str):
            raise Unprocessable(f"text_prompt must be a string, got {type(text).__name__} {text!r}")
        stripped = " ".join(text.split())
        if not stripped or not re.search(r"\w", stripped):
            raise Unprocessable(
                "text_prompt is empty (only spaces or punctuation): describe the structure to segment, "
                "e.g. 'liver' or 'CT images, liver tumor segmentation'"
            )
        if len(stripped) > self.max_prompt_chars:
            raise Unprocessable(
                f"text_prompt is {len(stripped)} characters long; at most {self.max_prompt_chars} are allowed"
            )
        return stripped

    def _text_prompt(self, text: str) -> Prompt:
        name = self._by_text.get(normalise(text))
        if name is not None:  # a label of the set: its value, its name, the prompt it was trained with
            return (name, self.label_set.labels[name], self.label_set.prompts[name])
        return (text, self.free_value, text)

    def _label_prompt_items(self, raw: Any) -> List[Any]:
        if raw is None or raw == "" or raw == []:
            return []
        if isinstance(raw, bool):
            raise Unprocessable(f"label_prompt must be label indices (e.g. [1, 2]), got {raw!r}")
        if isinstance(raw, (int, float)):
            items: List[Any] = [raw]
        elif isinstance(raw, str):
            items = [s.strip() for s in raw.strip().strip("[]").split(",") if s.strip()]
        elif isinstance(raw, (list, tuple)):
            items = list(raw)
        else:
            raise Unprocessable(f"label_prompt must be a list of label indices, got {type(raw).__name__}")
        if len(items) > MAX_LABEL_PROMPTS:
            raise Unprocessable(f"label_prompt has {len(items)} entries; at most {MAX_LABEL_PROMPTS} are allowed")
        return items

    def _resolve_label(self, item: Any) -> str:
        valid = ", ".join(f"{i}={n}" for n, i in self.label_set.labels.items())
        if isinstance(item, bool) or not isinstance(item, (int, float, str)):
            raise Unprocessable(f"label_prompt entry {item!r} is not a label index; label set '{self.label_set.name}' has {valid}")
        if isinstance(item, str) and not re.fullmatch(r"[+-]?\d+(\.0*)?", item.strip()):
            if normalise(item) == FREE_TEXT_NAME:
                return FREE_TEXT_NAME
            name = self._by_text.get(normalise(item))
            if name is None:
                raise Unprocessable(
                    f"label_prompt entry '{item}' is not a label of label set '{self.label_set.name}'; valid: {valid}"
                )
            return name
        value = float(item)
        if value != int(value):
            raise Unprocessable(f"label_prompt entry {item!r} is not an integer label index; valid: {valid}")
        if int(value) == self.free_value:
            return FREE_TEXT_NAME
        try:
            return self.label_set.name_of(int(value))
        except KeyError:
            raise Unprocessable(
                f"label_prompt index {int(value)} is not in label set '{self.label_set.name}'; valid: {valid}"
            ) from None
