"""Click requests in the infer task (hooks of :class:`lib.infers.refsam3d.RefSAM3DInfer`).

* :func:`parse_request`: clicks (``lib/infers/clicks.py``) or, without clicks, the text / label prompts;
* :func:`text_answer_keeper`: a text request with few prompts leaves each prompt's probabilities in the cache
  (``("text-answer", ...)``), so that the first click on it decodes only the windows it touches;
* :func:`run_clicks`: maps the clicks into the model grid, decodes the touched windows
  (``lib/click_inference.py``) and keeps the answer as the next click's previous mask (``("click-answer", ...)``).

Previous mask (SAM-style, the server keeps it; viewers send none): the last click answer for the same image,
target (label value, text) and settings when the request's clicks extend that answer's clicks; else, for
text + clicks, the text-only answer; else (clicks only, or ``reset_state``) none.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data import MetaTensor

from lib.click_inference import mirrored_click_probabilities
from lib.encoding_cache import nbytes
from lib.inference import mirrored_segment
from lib.infers.clicks import ClickRequest, check_inside, drop_free_text_from_auto, parse_click_request, to_model_grid
from lib.infers.prompt_parsing import FREE_TEXT_NAME

logger = logging.getLogger(__name__)

MAX_KEPT_TEXT_ANSWERS = 4  # a text request with at most this many prompts keeps their probabilities for clicks
VISTA3D = "vista3d"


def parse_request(task, request: Dict[str, Any]) -> Tuple[str, List[Tuple[str, int, str]], Optional[ClickRequest]]:
    """(mode, prompts, clicks): a click request has one prompt, its target; else the text / label prompts."""
    if task.type == VISTA3D:
        request = drop_free_text_from_auto(request, task.prompts.free_value)
    clicks = parse_click_request(request, task.prompts)
    if clicks is not None:
        return clicks.mode, [clicks.prompt], clicks
    mode, prompts = task.parse_prompts(request)
    return mode, prompts, None


def _key(task, data: Dict[str, Any], version: str, kind: str, *target) -> Tuple:
    roi = tuple(int(r) for r in task.roi_size)
    return (kind, data["_identity"], task._pre_settings(data), version, roi, data["sw_overlap"], *target)


def text_answer_keeper(task, data: Dict[str, Any], version: str, texts: Sequence[str]) -> Optional[Callable]:
    """``keep(i, probs)`` for :func:`lib.inference.segment_prompts` that caches each prompt's probabilities."""
    if len(texts) > MAX_KEPT_TEXT_ANSWERS:
        return None

    def keep(i: int, probs: torch.Tensor) -> None:
        task.cache.put(_key(task, data, version, "text-answer", texts[i]), probs.to("cpu", torch.float16).contiguous())

    return keep


def _encodings(task, data: Dict[str, Any], version: str):
    """(the study's window encodings, cached before?, put-back function)."""
    key = ("encoding", data["_identity"], task._pre_settings(data), version, tuple(int(r) for r in task.roi_size),
           data["sw_overlap"])
    encodings = task.cache.get(key)
    if encodings is not None:
        return encodings, True, lambda: None
    encodings = {}
    return encodings, False, lambda: task.cache.put(key, encodings, nbytes(encodings))


def _text_answer(task, data, version, model, image, text: str, encodings) -> Tuple[torch.Tensor, bool]:
    key = _key(task, data, version, "text-answer", text)
    cached = task.cache.get(key)
    if cached is not None:
        return cached.float(), True
    roi = tuple(int(r) for r in task.roi_size)  # the text path's answer: mirrored as that path mirrors
    probs = mirrored_segment(model, image[None], [text], roi, data["sw_overlap"], task.sw_batch_size,
                             task.store.device, encodings, precision=task.precision,
                             mirror_axes=task.mirror_axes())[0, 0].cpu()
    task.cache.put(key, probs.to(torch.float16).contiguous())
    return probs, False


def run_clicks(task, data: Dict[str, Any], model, version: str) -> Dict[str, Any]:
    """The infer task's ``run_inferer`` for a click request: ``data["pred"]`` (label map) and ``data["result"]``."""
    clicks: ClickRequest = data["_clicks"]
    image = data["image"]
    start = time.time()
    check_inside(clicks.points, np.asarray(image.meta["spatial_shape"]).tolist())
    grid = to_model_grid(clicks.points, np.asarray(image.meta["original_affine"]), np.asarray(image.affine),
                         image.shape[1:])
    encodings, hit, put_back = _encodings(task, data, version)
    base, base_cached = None, None
    if clicks.text is not None:
        base, base_cached = _text_answer(task, data, version, model, image, clicks.text, encodings)
    answer_key = _key(task, data, version, "click-answer", *clicks.key())
    last = None if clicks.reset else task.cache.get(answer_key)
    if last is not None and last["clicks"] <= clicks.click_set():
        previous, previous_from = last["probs"].float(), "last answer"
    elif base is not None and not clicks.reset:
        previous, previous_from = base, "text answer"
    else:
        previous, previous_from = None, "none"

    mirror_axes = task.mirror_axes()  # decoded as the text answer is: mirrored passes averaged
    probs, stats = mirrored_click_probabilities(
        model, image, clicks.text, grid, clicks.labels, task.roi_size, data["sw_overlap"], base=base, previous=previous,
        mirror_axes=mirror_axes, sw_batch_size=task.sw_batch_size, device=task.store.device, encodings=encodings,
        precision=task.precision)
    if not hit:
        put_back()
    task.cache.put(answer_key, {"probs": probs.to(torch.float16).contiguous(), "clicks": clicks.click_set()})

    label_map = torch.where(probs >= float(data["threshold"]), clicks.value, 0).to(torch.int32)
    data["pred"] = MetaTensor(label_map[None].float(), affine=image.affine.clone())
    name, value, text = clicks.prompt
    data["result"] = {
        "_label_names": {name: value},
        "prompts": {name: text},
        "prompt_mode": clicks.mode,
        "free_text": {"name": FREE_TEXT_NAME, "value": value, "prompt": text}
        if clicks.text is not None and value == task.prompts.free_value else None,
        "clicks": {
            "count": int(len(clicks.labels)), "positive": int(clicks.labels.sum()),
            "negative": int((clicks.labels == 0).sum()), "used": stats.clicks_used,
            "model_grid": [[round(float(c), 2) for c in p] for p in grid],
            "windows": stats.as_dict(), "previous_mask": previous_from,
            "text_answer": None if base_cached is None else ("cached" if base_cached else "computed"),
        },
        "model": {"preset": task.store.preset, "version": version, "trained": task.store.has_trained_weights(),
                  "mirror_axes": list(mirror_axes)},
        "cache": {"image": data.get("_cache_image"), "encoding": "hit" if hit else "miss"},
        "warnings": task.warnings(),
    }
    logger.info(f"RefSAM3D: {len(clicks.labels)} clicks ({clicks.mode}) decoded {stats.decoded}/{stats.total} windows "
                f"(encoded {stats.encoded}, previous mask: {previous_from}) in {time.time() - start:.2f}s")
    return data
