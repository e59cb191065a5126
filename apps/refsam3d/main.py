"""RefSAM3D Label: MONAI Label app serving text-prompted 3D segmentation (RefSAM3D) to OHIF, 3D Slicer and REST clients.

    monailabel start_server --app apps/refsam3d --studies <folder or DICOMweb URL> [--conf key value ...]

The ``--conf`` keys are parsed once, here, into ``lib/settings.py:AppSettings`` (docs/app.md lists them); this
file uses ``random_strategy`` (what serves OHIF's ``random``), ``dicomweb_search_filter``, ``train_keep_versions``
and the ``skip_*`` keys, and adds the routes of ``lib/web`` (weights versions, the ``/annotate/`` page).

The app is thin (as MONAI Label's radiology sample): ``lib/configs/refsam3d.py`` builds the tasks from the
settings; ``lib/infers/refsam3d.py`` is the infer task.  This file only wires them into ``MONAILabelApp`` and checks
each inference request before MONAI Label runs it, so that client mistakes get a 4xx with a readable message (the
error table: ``lib/errors.py``; see docs/app.md).
"""

import logging
import os
import threading
from typing import Dict

import lib.configs
from lib.activelearning.aliases import alias_random
from lib.activelearning.random_pick import SafeRandom
from lib.datastore import RefSAM3DDICOMWebDatastore
from lib.infers.dicom_seg import install_dicom_seg_fallback
from lib.infers.errors import install_http_error_handlers
from lib.infers.writer_warmup import warm_up_writer
from lib.server.auth import install_auth
from lib.server.datastore import harden_datastore
from lib.server.guards import install_datastore_guards
from lib.server.install import install_server_limits
from lib.server.sessions import harden_sessions
from lib.server.volume_header import check_volume_size
from lib.settings import AppSettings, ConfError
from lib.errors import BadRequest, Forbidden, NotFound, http_exception, status_of
from lib.uploads import is_upload
from lib.web import install_web_routes
from lib.weights_card import knows_line
from lib.weights_history import WeightsHistory

import monailabel
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First

logger = logging.getLogger(__name__)


class RefSAM3DApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = dict(conf or {})
        try:
            self.settings = AppSettings.from_conf(conf, app_dir)
        except ConfError as e:
            print(f"\n--------------------------------------------------------------------------\nRefSAM3D: {e}\n"
                  "--------------------------------------------------------------------------\n")
            raise SystemExit(2) from None
        self.model_dir = self.settings.model_dir
        self.limits = self.settings.limits
        os.makedirs(self.model_dir, exist_ok=True)
        config = lib.configs.RefSAM3DConfig()
        config.init("refsam3d", self.model_dir, conf, None, settings=self.settings)
        self.models: Dict[str, TaskConfig] = {"refsam3d": config}

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"RefSAM3D Label ({config.preset}, {config.label_set.name})",
            description="Text-prompted 3D segmentation (RefSAM3D: SAM ViT-B with 3D adapters and text prompts)",
            version=monailabel.__version__,
        )
        install_http_error_handlers()
        self.infer_gate = install_server_limits(self.limits)  # /infer off the event loop, upload limit
        harden_sessions(self.sessions())  # session ids checked before they become paths
        self.keep_versions = self.settings.keep_versions
        install_web_routes(config.store, self.keep_versions, config.extra_warnings.append)  # before the guards
        install_auth()  # MONAI Label's token check made to work (PyJWT 2), /reload guarded
        install_datastore_guards()  # 400 for unsafe names, 404 for unknown ids, roles, upload names
        if isinstance(self.datastore(), DICOMWebDatastore):
            install_dicom_seg_fallback(app_dir)

    def _download_dcmqi_tools(self):
        """MONAI Label downloads dcmqi (DICOM-SEG writer) when a DICOMweb datastore is created; offline that fails.

        Never abort the start for it: say so, and write DICOM-SEG with pydicom-seg instead (lib/infers/dicom_seg.py)."""
        try:
            super()._download_dcmqi_tools()
        except Exception as e:
            msg = (f"dcmqi's itkimage2segimage could not be downloaded ({type(e).__name__}: {str(e)[:200]}); "
                   "DICOM-SEG is written with pydicom-seg instead")
            logger.warning(f"RefSAM3D: {msg}")
            self.models["refsam3d"].extra_warnings.append(msg)

    def init_datastore(self):
        """MONAI Label's datastore with client-given ids/tags checked and atomic writes (lib/server/datastore.py)."""
        return harden_datastore(super().init_datastore())
    def _init_dicomweb_datastore(self):
        """MONAI Label's DICOMweb datastore, listing the label set's modality and never serving labelled series."""
        datastore = super()._init_dicomweb_datastore()
        try:
            return RefSAM3DDICOMWebDatastore.adopt(datastore, self.models["refsam3d"].modality,
                                                   self.settings.dicomweb_search_filter)
        except ValueError as e:  # not JSON, or not an object
            print(f"\nRefSAM3D: --conf dicomweb_search_filter: {e}\n")
            raise SystemExit(2) from None

    # ------------------------------------------------------------------ tasks
    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, task_config in self.models.items():
            task = task_config.infer()
            infers.update(task if isinstance(task, dict) else {name: task})
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        if self.settings.skip_trainers:
            return {}
        trainers: Dict[str, TrainTask] = {}
        for name, task_config in self.models.items():
            t = task_config.trainer()
            if t:
                trainers[name] = t
        return trainers

    def init_strategies(self) -> Dict[str, Strategy]:
        strategies: Dict[str, Strategy] = {"random": SafeRandom(), "first": First()}
        if not self.settings.skip_strategies:
            for task_config in self.models.values():
                strategies.update(task_config.strategy() or {})
        try:  # OHIF always asks for 'random': --conf random_strategy NAME decides what serves that name
            return alias_random(strategies, self.settings.random_strategy)
        except ValueError as e:
            print(f"\nRefSAM3D: {e}\n")
            raise SystemExit(2) from None

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        if self.settings.skip_scoring:
            return {}
        methods: Dict[str, ScoringMethod] = {}
        for task_config in self.models.values():
            methods.update(task_config.scoring_method() or {})
        return methods

    def on_init_complete(self):
        super().on_init_complete()
        config = self.models["refsam3d"]
        if config.preload:  # build the network now, in the background, so the first request does not wait for it

            def preload():
                try:
                    config.store.get()
                except Exception as e:  # reported in /info and answered with 503 on inference
                    logger.error(f"RefSAM3D: the network could not be built: {e}")
                try:  # ITK loads lazily: without this the first result file takes ~2 s to write
                    warm_up_writer()
                except Exception as e:  # the first request then loads it
                    logger.warning(f"RefSAM3D: could not pre-load the result writer: {e}")

            threading.Thread(target=preload, name="refsam3d-preload", daemon=True).start()

    # ------------------------------------------------------------------ the served weights, where people look
    def info(self):
        """The app name (OHIF's panel title, Slicer's app name) and description say whether the weights are trained."""
        meta = super().info()
        task = self._infers.get("refsam3d")
        if task is not None:
            card = task.weights_card()
            state = card["headline"]
            meta["name"] = f"{self.name} - {state}"
            meta["description"] = f"{state}{knows_line(card)}. {self.description}"  # Slicer shows the app's description too
        meta["infer_queue"] = self.infer_gate.stats()
        meta["warnings"] = self._datastore_warnings(meta.get("datastore") or {})
        model = meta.get("models", {}).get("refsam3d")
        if model is not None:  # earlier published weights, newest first (restore: POST /model/refsam3d/versions/ID/restore)
            history = WeightsHistory(self.models["refsam3d"].store.published_path, keep=self.keep_versions)
            model["weights_versions"] = [{k: v.get(k) for k in ("id", "archived", "reason", "label_set", "validation_dice",
                                                                "test", "training")} for v in history.versions()]
        return meta

    def _datastore_warnings(self, status: dict) -> list:
        """A datastore that lists no study is said so in /info (what OHIF's Next Sample would find: nothing)."""
        if status.get("total"):
            return []
        where = str(self.studies)
        ds = self.datastore()
        if isinstance(ds, RefSAM3DDICOMWebDatastore):
            return [f"the DICOMweb datastore {where} lists no series for the filter {ds.search_filter or '(none)'}: "
                    "store series of the label set's modality, or set MONAI_LABEL_DICOMWEB_SEARCH_FILTER"]
        return [f"the datastore {where} lists no study: put NIfTI/NRRD images (or DICOM series folders) there"]

    def model_info(self, model):
        """``GET /model/info/refsam3d``: MONAI Label's checksum and train stats, plus what the checkpoint records."""
        info = super().model_info(model)
        task = self._infers.get(model)
        if info is not None and hasattr(task, "weights_card"):
            card = task.weights_card()
            info["weights"] = card
            if (info.get("train_stats") or {}).get("status", "NOT STARTED") == "NOT STARTED":  # no run on this server
                info["train_stats"] = card.get("training") or {}
        return info

    # ------------------------------------------------------------------ inference with readable client errors
    def infer(self, request, datastore=None):
        try:
            request = self._check_request(request, datastore)
            check_volume_size(request.get("image"), self.limits.max_voxels, datastore or self.datastore())
            return super().infer(request, datastore)
        except Exception as e:  # the error table (lib/errors.py): client mistakes -> 4xx, the rest stays a 500
            if status_of(e) == 500:
                raise
            raise http_exception(e) from None

    def _allowed_roots(self):
        roots = []
        if not str(self.studies).startswith(("http://", "https://")):
            roots.append(os.path.realpath(self.studies))
        try:
            roots.append(os.path.realpath(self.datastore()._datastore.image_path()))  # DICOMweb cache, local images
        except Exception:
            pass
        sessions = self.sessions()
        if sessions is not None and sessions.store_path:
            roots.append(os.path.realpath(sessions.store_path))
        return roots

    def _check_request(self, request, datastore=None):
        request = dict(request)
        model = request.get("model")
        if not model:
            raise BadRequest("no model given: use POST /infer/refsam3d")
        if model not in self._infers:
            raise NotFound(f"unknown model '{model}': available models are {', '.join(sorted(self._infers))}")

        image = request.get("image")
        if image is None or (isinstance(image, str) and not image.strip()):
            raise BadRequest("no image: give an image id of the datastore (?image=...) or upload a file")
        if not isinstance(image, str):
            return request  # programmatic use with an in-memory image
        datastore = datastore if datastore else self.datastore()

        if os.path.exists(image):
            real = os.path.realpath(image)
            inside = any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self._allowed_roots())
            if not (is_upload(real) or inside):
                raise Forbidden(f"image path '{image}' is outside the studies folder: give an image id of the "
                                "datastore or upload the file")
            return request

        if isinstance(datastore, LocalDatastore) and not str(self.studies).startswith(("http://", "https://")):
            if datastore.get_image_uri(image):
                return request
            # a DICOM series folder inside the studies folder, e.g. image=ct_dicom
            candidate = os.path.realpath(os.path.join(self.studies, image))
            root = os.path.realpath(self.studies)
            if candidate.startswith(root + os.sep) and os.path.isdir(candidate) and any(os.scandir(candidate)):
                request["image"] = candidate
                return request
            ids = datastore.list_images()
            shown = ", ".join(sorted(ids)[:10]) + (" ..." if len(ids) > 10 else "")
            raise NotFound(f"image '{image}' is not in the datastore ({len(ids)} images: {shown})")

        try:  # DICOMweb and other remote datastores: fetch now to report a missing series clearly
            uri = datastore.get_image_uri(image)
        except Exception as e:
            raise NotFound(f"image '{image}' could not be fetched from the datastore: {str(e)[:300]}") from None
        if not uri or not os.path.exists(uri):
            raise NotFound(f"image '{image}' is not in the datastore")
        return request
