"""Bad input -> a clear 4xx, and the server keeps serving.

MONAI Label 0.8.5 answers several client mistakes with 500 before the app sees the request
(``json.loads(params)`` on a non-JSON ``params`` form field, ``request.update(params)`` on JSON
that is not an object, "Neither Image nor File ..." as ``HTTPException(500)``).  The app cannot
intercept those in ``MONAILabelApp.infer``, so ``install_http_error_handlers`` registers exception
handlers on the running FastAPI application that turn exactly those cases into 400 and leave
every other error alone; errors of the table (``lib/errors.py``) raised by any route get their own status.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from typing import Callable, Dict, Optional

from lib.errors import SERVER_ERROR, AppError, BadRequest, ClientMessage, json_response, text_response

logger = logging.getLogger(__name__)

PARAMS_HELP = 'the "params" form field must be a JSON object, e.g. {"text_prompt": "liver"} or {"label_prompt": [1, 2]}'

# HTTPException(500) details of monailabel/endpoints/infer.py that are client mistakes
CLIENT_ERRORS_500 = {
    "Neither Image nor File not Session ID input is provided": BadRequest(
        "no image: give an image id of the datastore (?image=...), upload a file (form field 'file') or give a session_id"),
    "DICOM SEG format is not supported in a non-DICOM datastore": BadRequest(
        "output=dicom_seg needs a DICOMweb datastore (--studies http://host/dicom-web); "
        "with a local studies folder ask for output=image, json or all"),
}


def _raised_parsing_params(exc: BaseException) -> bool:
    """True when ``exc`` comes from parsing ``params`` in monailabel's ``run_inference`` (not from deeper code)."""
    frames = traceback.extract_tb(exc.__traceback__)
    for i, frame in enumerate(frames):
        if frame.name == "run_inference" and frame.filename.replace("\\", "/").endswith("monailabel/endpoints/infer.py"):
            deeper = frames[i + 1 :]
            return all("/json/" in f.filename.replace("\\", "/") for f in deeper)
    return False


def params_error_detail(exc: BaseException) -> Optional[str]:
    if not _raised_parsing_params(exc):
        return None
    if isinstance(exc, json.JSONDecodeError):
        return f"{PARAMS_HELP}; it is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    return f"{PARAMS_HELP}; got JSON that is not an object ({exc})"


def install_http_error_handlers() -> bool:
    """Register the handlers on ``monailabel.app.app`` (only when the server is running it)."""
    module = sys.modules.get("monailabel.app")
    fastapi_app = getattr(module, "app", None) if module else None
    if fastapi_app is None:
        return False

    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import JSONResponse

    async def on_params_error(request, exc: Exception):
        detail = params_error_detail(exc)
        if detail is not None:
            return json_response(BadRequest(detail))
        logger.error("Unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return text_response(exc)  # not in the table: a 500 that says nothing of the internals

    async def on_app_error(request, exc: AppError):
        return json_response(exc)

    async def on_http_exception(request, exc: StarletteHTTPException):
        remap = CLIENT_ERRORS_500.get(str(exc.detail)) if exc.status_code == SERVER_ERROR else None
        if remap is not None:
            return json_response(remap)
        if isinstance(exc.detail, ClientMessage):
            return JSONResponse({"detail": str(exc.detail), **exc.detail.extra}, status_code=exc.status_code)
        return await http_exception_handler(request, exc)

    handlers = {
        json.JSONDecodeError: on_params_error,
        ValueError: on_params_error,
        TypeError: on_params_error,
        AttributeError: on_params_error,
        StarletteHTTPException: on_http_exception,
        AppError: on_app_error,  # any error of the table raised outside /infer (web routes, guards)
    }
    patched = register_exception_handlers(fastapi_app, handlers)
    logger.info(f"RefSAM3D: client-error handlers installed (running stack patched: {patched})")
    return True


def register_exception_handlers(fastapi_app, handlers: Dict[type, Callable]) -> bool:
    """Add ``handlers`` to the FastAPI app and to the middleware stack it already built; True if it was patched."""
    from starlette.middleware.exceptions import ExceptionMiddleware

    for exc_class, handler in handlers.items():
        fastapi_app.add_exception_handler(exc_class, handler)  # used if the middleware stack is rebuilt
    # the stack was built when the server started (the app is created during the lifespan event)
    node, patched = getattr(fastapi_app, "middleware_stack", None), False
    while node is not None:
        if isinstance(node, ExceptionMiddleware):
            for exc_class, handler in handlers.items():
                node.add_exception_handler(exc_class, handler)
            patched = True
        node = getattr(node, "app", None)
    return patched
