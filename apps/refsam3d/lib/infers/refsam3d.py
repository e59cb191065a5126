"""The ``refsam3d`` infer task: text-prompted 3D segmentation of a whole volume.

Prompts, in this order of precedence:

* ``text_prompt``: a label of the set (its name or prompt, any case) is that label, with its own value; other
  free text is written with the value ``/info`` declares as "free text prompt" (255), never as another label;
* ``label_prompt`` (label indices or names of the label set, as OHIF's class-prompt tab sends them):
  those labels with their own indices, each through the label set's text prompt;
* both: both answered, each under its own value; neither: every label of the set, one multi-label map.
(``lib/infers/prompt_parsing.py``.)

An empty ``text_prompt`` (``""``) means "no free text": 3D Slicer sends every option of the task,
so an untouched text field arrives as ``""``.  A prompt of only spaces or punctuation, or longer
than ``max_prompt_chars``, is rejected with 422.

The response's ``label_names`` is exactly ``{name: value written in the mask}`` (MONAI Label's
``BasicInferTask.__call__`` overwrites it with the whole label set; ``__call__`` here restores it).
Per prompt it also says how sure it is: ``found``, ``confidence``, ``prompt_similarity`` (``lib/infers/prompt_report.py``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from lib.errors import BadRequest, NotFound, Unavailable, Unprocessable
from lib.encoding_cache import EncodingCache, file_identity, nbytes
from lib.inference import segment_prompts
from lib.infers.click_task import parse_request, run_clicks, text_answer_keeper
from lib.infers.prompt_parsing import FREE_TEXT_NAME, PromptParser
from lib.infers.prompt_report import PromptChecks, PromptReporter
from lib.label_resample import resample_label_map
from lib.model_store import ModelStore
from lib.precision import precision_name
from lib.request_settings import RESULT_EXTENSIONS, InferOptions
from lib.settings import AppSettings
from lib.transforms import load_transforms
from lib.uploads import is_upload
from lib.weights_card import headline, knows_line, read_extra, read_summary, trained_flip_axes
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.post import Restored

logger = logging.getLogger(__name__)



class RestoreGeometryd(MapTransform):
    """Resample the label map (nearest neighbour) from the pre-processed grid back onto the original image grid.

    Uses the pre-processed image's current affine and its ``original_affine`` / ``spatial_shape``, so it
    undoes orientation and spacing in one step, whatever the transform history.  The values are MONAI's
    float32 nearest ``SpatialResample``; axis-aligned grids are restored by index gathers over the mask's
    bounding box, as the smallest integer dtype that holds the labels (``lib/label_resample.py``).
    """

    def __init__(self, keys="pred", ref_image="image"):
        super().__init__(keys)
        self.ref_image = ref_image

    def __call__(self, data):
        d = dict(data)
        ref = d[self.ref_image]
        original_affine = torch.as_tensor(np.asarray(ref.meta["original_affine"]), dtype=torch.float64)
        spatial_shape = [int(s) for s in np.asarray(ref.meta["spatial_shape"]).tolist()][-3:]
        for key in self.key_iterator(d):
            pred = d[key]
            pred = pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)
            out = resample_label_map(pred[0], ref.affine.to(torch.float64), original_affine, spatial_shape)
            d[key] = MetaTensor(out[None], affine=original_affine)
        return d


class RefSAM3DInfer(BasicInferTask):
    """Text-prompted segmentation with RefSAM3D; weights from a :class:`ModelStore`, encodings in an :class:`EncodingCache`."""

    def __init__(
        self,
        store: ModelStore,
        settings: AppSettings,
        cache: EncodingCache,
        prompt_chunk: int = 8,
        description: str = "",
        extra_warnings: Optional[List[str]] = None,
        infer_type: str = InferType.SEGMENTATION,
        config: Optional[Dict[str, Any]] = None,
        description_suffix: str = "",
        precision: Optional[torch.dtype] = None,
        **kwargs,
    ):
        """``settings``: the app's parsed ``--conf`` (label set, modality, spacing, ROI, overlap, prompt checks)."""
        self.store = store
        self.settings = settings
        self.label_set = label_set = settings.label_set
        self.cache = cache
        self.target_spacing = tuple(float(s) for s in settings.target_spacing)
        self.sw_overlap = settings.sw_overlap
        self.sw_batch_size = settings.sw_batch_size
        self.precision = precision  # autocast dtype of the image encoding (lib/precision.py); None = float32
        self.modality = settings.modality
        self.max_prompt_chars = settings.max_prompt_chars
        self.prompts = PromptParser(label_set, self.max_prompt_chars)
        self.prompt_chunk = int(prompt_chunk)
        checks = PromptChecks(min_similarity=settings.min_prompt_similarity, strict=settings.strict_prompts)
        self.reporter = PromptReporter(label_set, checks)  # found / confidence / prompt_similarity
        self.extra_warnings = extra_warnings if extra_warnings is not None else []
        self._base_description = description or (
            f"RefSAM3D text-prompted 3D segmentation ({store.preset}); label set '{label_set.name}' "
            f"({len(label_set.labels)} labels, {self.modality}). Free text via text_prompt, labels via "
            "label_prompt, or every label of the set when neither is given."
        ) + description_suffix
        self._last_version: Optional[str] = None
        super().__init__(
            path=None,
            network=None,
            type=infer_type,
            labels=label_set.labels,
            dimension=3,
            description=self._base_description,
            config=config or {"text_prompt": "", "threshold": InferOptions().threshold},
            load_strict=False,
            roi_size=tuple(int(r) for r in settings.roi_size),
            **kwargs,
        )

    # ------------------------------------------------------------------ info
    def is_valid(self) -> bool:
        return True  # weights are managed by the ModelStore (an untrained model still serves, with a warning)

    def warnings(self) -> List[str]:
        return self.store.warnings() + list(self.extra_warnings)

    def mirror_axes(self) -> Tuple[int, ...]:
        """The flips a text answer averages (``--conf mirror_axes``; ``auto``: those the served weights were trained
        with, as nnU-Net mirrors; none for untrained weights)."""
        return self.settings.served_mirror_axes(trained_flip_axes(read_extra(self.store.published_path)))

    def weights_card(self) -> Dict[str, Any]:
        """Whether the served weights are trained, on what and how well (``lib/weights_card.py``): the test
        evaluation made with the flips this server averages."""
        summary = read_summary(self.store.published_path, self.mirror_axes())
        return {"trained": summary is not None and not summary.get("unreadable"),
                "headline": headline(summary, self.label_set.name), **(summary or {})}

    def get_path(self, validate=True):
        """The published weights (``GET /model/refsam3d`` downloads them, ``/model/info/refsam3d`` checksums them)."""
        path = str(self.store.published_path)
        return path if not validate or os.path.isfile(path) else None

    def info(self) -> Dict[str, Any]:
        warnings = self.warnings()
        card = self.weights_card()
        description = f"{card['headline']}{knows_line(card)}. {self._base_description}"
        if warnings:
            description += " WARNING: " + " | ".join(warnings)
        return {
            "type": self.type,
            "labels": self.prompts.declared_labels(),  # + "free text prompt", so viewers name free text right
            "free_text_label": {"name": FREE_TEXT_NAME, "value": self.prompts.free_value},
            "dimension": self.dimension,
            "description": description,
            "config": self.config(),
            "label_set": self.label_set.name,
            "prompts": self.label_set.prompts,
            "synonyms": self.reporter.synonyms(read_extra(self.store.published_path)),
            "prompt_checks": {"min_prompt_similarity": self.reporter.checks.min_similarity,
                              "strict_prompts": self.reporter.checks.strict},
            "modality": self.modality,
            "target_spacing": list(self.target_spacing),
            "roi_size": list(self.roi_size),
            "sw_overlap": self.sw_overlap,
            "mirror_axes": list(self.mirror_axes()),  # test-time flips of a text answer (--conf mirror_axes)
            "precision": precision_name(self.precision),
            "weights": {**self.store.status(), "card": card},
            "warnings": warnings,
            "cache": self.cache.stats(),
        }

    # ------------------------------------------------------------------ request parsing
    def parse_prompts(self, request: Dict[str, Any]) -> Tuple[str, List[Tuple[str, int, str]]]:
        """(mode, [(name, value in the mask, text prompt)]); ``Unprocessable`` for bad prompts (lib/infers/prompt_parsing.py)."""
        return self.prompts.parse(request)

    # ------------------------------------------------------------------ the call
    def __call__(self, request, callbacks=None):
        request = dict(request)
        mode, prompts, clicks = parse_request(self, request)  # clicks: lib/infers/click_task.py
        opts = InferOptions.from_request(request, self.sw_overlap, self.modality)
        model, version = self._served_model()  # prompts far from what it knows: warned, or 422 when strict
        matcher = self.reporter.matcher(model, version, read_extra(self.store.published_path))
        matches, prompt_warnings = self.reporter.check([p for p in prompts if p[2]], matcher)  # not clicks only
        max_value = max(v for _, v, _ in prompts)
        if opts.result_dtype == "uint8" and max_value > 255:
            raise Unprocessable(f"result_dtype uint8 cannot hold label value {max_value}; ask for uint16")
        request.update(
            {
                "_prompts": prompts,
                "_mode": mode,
                "_prompt_matches": matches,
                "_prompt_warnings": prompt_warnings,
                "_clicks": clicks,
                "threshold": opts.threshold,
                "sw_overlap": opts.sw_overlap,
                "modality": opts.modality,
                "result_dtype": opts.result_dtype or ("uint8" if max_value <= 255 else "uint16"),
                "result_extension": opts.result_extension,
            }
        )
        result_file, result_json = super().__call__(request, callbacks)
        label_names = result_json.pop("_label_names", None)
        if label_names is not None:
            result_json["label_names"] = label_names  # BasicInferTask wrote the whole label set here
        return result_file, result_json

    # ------------------------------------------------------------------ pre-processing (cached per study)
    def _image_identity(self, path: str) -> Tuple:
        if os.path.isdir(path):
            return file_identity(path)
        return file_identity(path, hash_content=is_upload(path))  # uploads: identified by content, not by name

    def _pre_settings(self, data) -> Tuple:
        window = tuple(self.label_set.ct_window) if data.get("modality", self.modality) == "CT" else None
        return (data.get("modality", self.modality), self.target_spacing, window)

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        modality, spacing, window = self._pre_settings(data or {})
        return load_transforms(modality, spacing, ct_window=window)

    def run_pre_transforms(self, data: Dict[str, Any], transforms):
        path = data.get("image")
        if not isinstance(path, str) or not path:
            raise BadRequest("no image: give an image id of the datastore or upload a file")
        if not os.path.exists(path):
            raise NotFound(f"image '{os.path.basename(path)}' does not exist")
        identity = self._image_identity(path)
        key = ("image", identity, self._pre_settings(data))
        data["_identity"] = identity

        def compute():
            out = super(RefSAM3DInfer, self).run_pre_transforms(dict(data), transforms)
            return out["image"]

        image, hit = self.cache.compute_once(key, compute)
        data["image"] = image  # read-only from here on (shared with the cache)
        data["_cache_image"] = "hit" if hit else "miss"
        return data

    def inverse_transforms(self, data=None):
        return None  # RestoreGeometryd in post_transforms maps the label map back to the original grid

    # ------------------------------------------------------------------ inference
    def _served_model(self) -> Tuple[Any, str]:
        try:
            return self.store.get()
        except Exception as e:
            raise Unavailable(
                f"the RefSAM3D network is not available ({type(e).__name__}: {str(e)[:300]}); see /info for the weights status"
            ) from e

    def run_inferer(self, data: Dict[str, Any], convert_to_batch=True, device="cuda"):
        model, version = self._served_model()
        if version != self._last_version:
            if self._last_version is not None:
                dropped = self.cache.discard(lambda k: k[0] == "encoding" and k[3] != version)
                logger.info(f"RefSAM3D weights changed ({self._last_version} -> {version}); dropped {dropped} cached encodings")
            self._last_version = version

        if data.get("_clicks") is not None:  # decoder-only reruns on the windows the clicks touch
            return run_clicks(self, data, model, version)
        prompts: List[Tuple[str, int, str]] = data["_prompts"]
        image: torch.Tensor = data["image"]
        roi = tuple(int(r) for r in self.roi_size)
        overlap = data["sw_overlap"]  # "auto" or a fraction
        key = ("encoding", data["_identity"], self._pre_settings(data), version, roi, overlap)
        texts = [p for _, _, p in prompts]
        confidences: Dict[int, Optional[float]] = {}
        mirror_axes = self.mirror_axes()

        def run(encodings):
            return segment_prompts(
                model, image[None], texts, roi, overlap, self.sw_batch_size, self.store.device, encodings,
                threshold=float(data["threshold"]), chunk=self.prompt_chunk, confidences=confidences,
                keep=text_answer_keeper(self, data, version, texts),  # for a click that follows
                precision=self.precision, mirror_axes=mirror_axes,
            )

        start = time.time()
        encodings = self.cache.get(key)
        hit = encodings is not None
        if not hit:
            with self.cache.key_lock(key):  # a second request for this study waits for this encoding
                encodings = self.cache.get(key)
                hit = encodings is not None
                if not hit:
                    encodings = {}
                    labels, counts = run(encodings)
                    stored = self.cache.put(key, encodings, nbytes(encodings))
                    logger.info(f"RefSAM3D: encoded {len(encodings)} windows ({nbytes(encodings) / 2**20:.1f} MiB, "
                                f"cached: {stored}) in {time.time() - start:.2f}s")
        if hit:
            labels, counts = run(encodings)

        lut = torch.zeros(len(prompts) + 1, dtype=torch.int32)
        for k, (_, value, _) in enumerate(prompts, start=1):
            lut[k] = value
        label_map = lut[labels.long()]
        data["pred"] = MetaTensor(label_map[None].float(), affine=image.affine.clone())
        data["result"] = {
            "_label_names": {name: value for name, value, _ in prompts},
            "prompts": {name: text for name, _, text in prompts},
            "prompt_mode": data["_mode"],
            "free_text": self.prompts.free_text(prompts),
            "model": {"preset": self.store.preset, "version": version, "trained": self.store.has_trained_weights(),
                      "mirror_axes": list(mirror_axes)},
            "cache": {"image": data.get("_cache_image"), "encoding": "hit" if hit else "miss"},
            "warnings": self.warnings() + data.get("_prompt_warnings", []),
            **self.reporter.fields(prompts, data.get("_prompt_matches", {}), confidences),
        }
        return data

    # ------------------------------------------------------------------ post-processing and writing
    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [
            RestoreGeometryd(keys="pred", ref_image="image"),
            Restored(keys="pred", ref_image="image"),
        ]

    def writer(self, data: Dict[str, Any], extension=None, dtype=None):
        pred = data["pred"]
        arr = pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(np.asarray(pred))
        flat = arr.flatten()  # integer labels (lib/label_resample.py): counted without an int64 copy of the volume
        values = torch.bincount(flat if not flat.is_floating_point() else flat.long().clamp(min=0))
        result = data.setdefault("result", {})
        result["voxels"] = {
            name: int(values[v]) if v < len(values) else 0 for name, v in result.get("_label_names", {}).items()
        }
        self.reporter.found(result)  # found = voxels written; no confidence for an empty mask
        if not data.get("result_extension"):
            path = str(data.get("image_path") or "")
            ext = next((e for e in RESULT_EXTENSIONS if path.lower().endswith(e)), ".nii.gz")
            data["result_extension"] = ext
        return super().writer(data, extension=extension, dtype=dtype)
