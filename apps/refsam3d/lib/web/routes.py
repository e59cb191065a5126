"""Routes the app adds to MONAI Label's FastAPI server (they are looked up per request, so adding them once the
server runs is enough).

* ``GET  /model/refsam3d/versions``                 the served weights and the kept earlier versions
* ``POST /model/refsam3d/versions/{id}/restore``    serve a kept version again (the served one is kept first);
                                                    admin role when MONAI Label's auth is on
* ``PUT  /model/refsam3d``                          MONAI Label's upload, answered first here: a checked
                                                    checkpoint, the served weights kept, an atomic rename
* ``GET  /annotate/api/studies``                    the datastore's studies and whether each has a final label
* ``GET  /annotate/``                                the annotation page (``static/``), NiiVue from
                                                    ``node_modules/@niivue/niivue/dist`` at ``/annotate/niivue/``
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

from fastapi import Depends, UploadFile
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from lib.errors import BadRequest, NotFound, http_exception
from lib.weights_history import VersionNotFound, WeightsHistory

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
NIIVUE_DIST = WEB_DIR / "node_modules" / "@niivue" / "niivue" / "dist"
NIIVUE_MISSING = ("the annotation page's viewer is not installed: run scripts/setup.sh "
                  f"(npm install in {WEB_DIR}) and restart")


def _role(name: str):
    """MONAI Label's role check (``RBAC``) for the role ``MONAI_LABEL_AUTH_ROLE_<name>`` (when auth is on)."""
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC

    return RBAC(getattr(settings, f"MONAI_LABEL_AUTH_ROLE_{name}"))


def versions_payload(store, history: WeightsHistory) -> Dict[str, Any]:
    return {"served": store.version, "published_weights": str(store.published_path) if store.has_trained_weights()
            else None, "versions": history.versions()}


def replace_by_upload(store, history: WeightsHistory, file: UploadFile) -> Dict[str, Any]:
    """Check the upload is a readable RefSAM3D checkpoint (else 400, nothing changed), keep the served weights as a
    version, then rename the upload over the published file (atomic, unlike MONAI Label's copy)."""
    from lib.atomic_files import new_file_mode
    from lib.model import read_checkpoint
    from monailabel.utils.others.generic import file_checksum

    published = Path(store.published_path)
    published.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=published.name + ".", suffix=".upload", dir=str(published.parent))
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(file.file, out, length=1 << 22)
        try:
            read_checkpoint(tmp)
        except Exception as e:  # noqa: BLE001 - any unreadable upload is the client's mistake
            raise http_exception(BadRequest(f"not a RefSAM3D checkpoint: {str(e)[:300]}")) from None
        os.chmod(tmp, new_file_mode())
        kept = history.archive_current(f"replaced by an upload (PUT /model/refsam3d, {file.filename or 'no name'})")
        os.replace(tmp, published)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info(f"RefSAM3D: uploaded weights published to {published}; kept version {kept and kept['id']}")
    return {"checksum": file_checksum(str(published)), "modified_time": int(published.stat().st_mtime),
            "kept_version": kept["id"] if kept else None}


def install_web_routes(store, keep_versions: int, warn: Callable[[str], None]) -> bool:
    """Add the routes to ``monailabel.app.app`` (only when the server is running it); ``warn`` goes to /info."""
    module = sys.modules.get("monailabel.app")
    app = getattr(module, "app", None) if module else None
    if app is None or getattr(app.state, "refsam3d_web", False):
        return False
    app.state.refsam3d_web = True
    history = WeightsHistory(store.published_path, keep=keep_versions)

    @app.get("/model/refsam3d/versions", tags=["RefSAM3D"], summary="Served weights and the kept earlier versions")
    def list_versions(user=Depends(_role("USER"))):
        return versions_payload(store, history)

    @app.post("/model/refsam3d/versions/{version}/restore", tags=["RefSAM3D"],
              summary="Serve a kept version again (the served weights are kept as a version first)")
    def restore_version(version: str, user=Depends(_role("ADMIN"))):
        try:
            restored = history.restore(version)
        except VersionNotFound as e:
            raise http_exception(NotFound(str(e.args[0]))) from None
        logger.info(f"RefSAM3D: weights version {version} restored to {store.published_path}")
        try:
            store.get()  # load it now: the version /info and the next inference report is the restored one
        except Exception as e:  # noqa: BLE001 - reported in /info by the store; the file is in place
            logger.warning(f"RefSAM3D: restored weights not loaded yet: {e}")
        return {"restored": restored, **versions_payload(store, history)}

    @app.put("/model/refsam3d", tags=["RefSAM3D"],
             summary="Upload weights to serve (a RefSAM3D checkpoint); the served ones are kept as a version first")
    def upload_weights(file: UploadFile, user=Depends(_role("ADMIN"))):
        return replace_by_upload(store, history, file)

    app.router.routes.insert(0, app.router.routes.pop())  # before MONAI Label's PUT /model/{model} (no version kept)

    @app.get("/annotate/api/studies", tags=["RefSAM3D"], summary="The datastore's studies, labelled (final) or not")
    def list_studies(user=Depends(_role("USER"))):
        from monailabel.interfaces.utils.app import app_instance

        datastore = app_instance().datastore()
        labelled = set(datastore.get_labeled_images())
        return {"studies": [{"id": i, "labelled": i in labelled} for i in sorted(datastore.list_images())]}

    @app.get("/annotate", include_in_schema=False)
    def annotate_root():
        return RedirectResponse("/annotate/")

    if NIIVUE_DIST.is_dir():
        app.mount("/annotate/niivue", StaticFiles(directory=str(NIIVUE_DIST)), name="annotate-niivue")
    else:
        warn(NIIVUE_MISSING)
    app.mount("/annotate", StaticFiles(directory=str(STATIC_DIR), html=True), name="annotate")
    return True
