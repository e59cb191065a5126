"""HTTP side of the name checks: datastore client errors answered with 400/404, uploaded file names checked.

* ``UnsafeNameError`` (``lib/server/names.py``, a ``BadRequest``) and MONAI Label's ``ImageNotFoundException`` /
  ``LabelNotFoundException`` (its endpoints let them become 500; ``NotFound`` in the table): answered by
  ``lib/errors.py``.
* Uploaded file names and the app's roles: ``lib/server/route_guard.py``.
"""

from __future__ import annotations

import logging

from lib.errors import json_response
from lib.infers.errors import register_exception_handlers
from lib.server.install import running_fastapi_app
from lib.server.names import UnsafeNameError
from lib.server.route_guard import install_route_guards

logger = logging.getLogger(__name__)


def install_datastore_guards() -> bool:
    """Register the handlers and the route guards on the running ``monailabel.app.app``."""
    fastapi_app = running_fastapi_app()
    if fastapi_app is None:
        return False
    from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException

    async def on_unsafe_name(request, exc: UnsafeNameError):
        logger.warning(f"RefSAM3D: refused {request.method} {request.url.path}: {exc.message}")
        return json_response(exc)

    async def on_not_found(request, exc):
        return json_response(exc)

    register_exception_handlers(fastapi_app, {UnsafeNameError: on_unsafe_name, ImageNotFoundException: on_not_found,
                                              LabelNotFoundException: on_not_found})
    install_route_guards(fastapi_app)
    return True
