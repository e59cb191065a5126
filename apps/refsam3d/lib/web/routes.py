"""Routes the app adds to MONAI Label's FastAPI server (they are looked up per request, so adding them once the
server runs is enough).

* ``GET  /model/refsam3d/versions``                 the served weights and the kept earlier versions
* ``POST /model/refsam3d/versions/{id}/restore``    serve a kept version again (the served one is kept first);
                                                    admin role when MONAI Label's auth is on
* ``GET  /annotate/api/studies``                    the datastore's studies and whether each has a final label
* ``GET  /annotate/``                                the annotation page (``static/``), NiiVue from
                                                    ``node_modules/@niivue/niivue/dist`` at ``/annotate/niivue/``
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict

from fastapi import Depends, HTTPException
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from lib.weights_history import VersionNotFound, WeightsHistory

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
NIIVUE_DIST = WEB_DIR / "node_modules" / "@niivue" / "niivue" / "dist"
NIIVUE_MISSING = ("the annotation page's viewer is not installed: run scripts/setup.sh "
                  f"(npm install in {WEB_DIR}) and restart")


def _admin():
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC

    return RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)


def versions_payload(store, history: WeightsHistory) -> Dict[str, Any]:
    return {"served": store.version, "published_weights": str(store.published_path) if store.has_trained_weights()
            else None, "versions": history.versions()}


def install_web_routes(store, keep_versions: int, warn: Callable[[str], None]) -> bool:
    """Add the routes to ``monailabel.app.app`` (only when the server is running it); ``warn`` goes to /info."""
    module = sys.modules.get("monailabel.app")
    app = getattr(module, "app", None) if module else None
    if app is None or getattr(app.state, "refsam3d_web", False):
        return False
    app.state.refsam3d_web = True
    history = WeightsHistory(store.published_path, keep=keep_versions)

    @app.get("/model/refsam3d/versions", tags=["RefSAM3D"], summary="Served weights and the kept earlier versions")
    def list_versions():
        return versions_payload(store, history)

    @app.post("/model/refsam3d/versions/{version}/restore", tags=["RefSAM3D"],
              summary="Serve a kept version again (the served weights are kept as a version first)")
    def restore_version(version: str, user=Depends(_admin())):
        try:
            restored = history.restore(version)
        except VersionNotFound as e:
            raise HTTPException(status_code=404, detail=str(e.args[0])) from None
        logger.info(f"RefSAM3D: weights version {version} restored to {store.published_path}")
        try:
            store.get()  # load it now: the version /info and the next inference report is the restored one
        except Exception as e:  # noqa: BLE001 - reported in /info by the store; the file is in place
            logger.warning(f"RefSAM3D: restored weights not loaded yet: {e}")
        return {"restored": restored, **versions_payload(store, history)}

    @app.get("/annotate/api/studies", tags=["RefSAM3D"], summary="The datastore's studies, labelled (final) or not")
    def list_studies():
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
