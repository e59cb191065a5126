"""The one error table: the kinds of client-facing errors and their HTTP status codes.

The app layer (``main.py``, ``lib/configs``, ``lib/infers``, ``lib/server``, ``lib/web``) raises these kinds
(``raise NotFound("image 'x' is not in the datastore")``) and never writes a status code; the pre-processing,
model and training packages raise plain Python errors, which :data:`PLAIN` maps to a kind.  ``status_of``,
``http_exception`` and ``json_response`` are how an error becomes an answer; anything not in the table is a 500
whose answer says nothing of its internals.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Type

from lib.image_errors import ImageNotFoundError, UnreadableImageError, UnusableImageError

INTERNAL_ERROR = "Internal Server Error"
SERVER_ERROR = 500  # the status of anything not in the table


class AppError(Exception):
    """An error the client is told about: ``message`` (the ``detail``), optional ``headers`` and extra JSON fields."""

    def __init__(self, message: str, headers: Optional[Mapping[str, str]] = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.headers = dict(headers) if headers else None
        self.extra = extra

    @property
    def status_code(self) -> int:
        return status_of(self)


class BadRequest(AppError):
    """The request is malformed (missing image, unreadable upload, unsafe name, bad JSON)."""


class Unauthorized(AppError):
    """No valid credentials."""


class Forbidden(AppError):
    """Valid request, not allowed (e.g. a path outside the studies folder)."""


class NotFound(AppError):
    """The model, image, label or version named does not exist."""


class Conflict(AppError):
    """The request clashes with the current state."""


class TooLarge(AppError):
    """The request body is larger than the server accepts."""


class Unprocessable(AppError):
    """Well-formed, but its values cannot be used (bad prompt, threshold, clicks; a 2D or oversized volume)."""


class BadGateway(AppError):
    """A server this one depends on (the identity provider) answered with an error."""


class Unavailable(AppError):
    """The server cannot answer now (network not built, queue full, identity provider unreachable)."""


STATUS: Dict[Type[AppError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unprocessable: 422,
    BadGateway: 502,
    Unavailable: 503,
}

# plain errors of the packages below the app layer -> their kind
PLAIN: Dict[Type[BaseException], Type[AppError]] = {
    ImageNotFoundError: NotFound,
    UnreadableImageError: BadRequest,
    UnusableImageError: Unprocessable,
}


def _foreign_kinds() -> Dict[Type[BaseException], Type[AppError]]:
    """Errors of MONAI Label that are client mistakes (imported when first needed)."""
    from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException

    return {ImageNotFoundException: NotFound, LabelNotFoundException: NotFound}


def kind_of(exc: BaseException) -> Optional[Type[AppError]]:
    """The kind of ``exc`` in the table, or None (a server error)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return cls  # type: ignore[return-value]
        if cls in PLAIN:
            return PLAIN[cls]
    try:
        foreign = _foreign_kinds()
    except ImportError:  # used without MONAI Label (scripts, unit tests)
        return None
    for cls in type(exc).__mro__:
        if cls in foreign:
            return foreign[cls]
    return _monailabel_kind(exc)


def _monailabel_kind(exc: BaseException) -> Optional[Type[AppError]]:
    """MONAI Label's ``MONAILabelException`` for invalid input / app errors is the client's mistake: 400."""
    from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

    if isinstance(exc, MONAILabelException) and exc.error in (MONAILabelError.INVALID_INPUT, MONAILabelError.APP_ERROR):
        return BadRequest
    return None


def status_of(exc: BaseException) -> int:
    """The HTTP status of ``exc``: its kind's, else 500."""
    kind = kind_of(exc)
    return STATUS[kind] if kind is not None else SERVER_ERROR


def message_of(exc: BaseException) -> str:
    """What the client reads: the error's message for a known kind, nothing of the internals otherwise."""
    if kind_of(exc) is None:
        return INTERNAL_ERROR
    message = getattr(exc, "message", None) or getattr(exc, "msg", None)  # AppError / MONAI Label's exceptions
    return str(message) if message else str(exc)


def answer(exc: BaseException) -> Tuple[int, Dict[str, Any], Optional[Dict[str, str]]]:
    """(status, JSON body, headers) for ``exc``."""
    extra = exc.extra if isinstance(exc, AppError) else {}
    headers = exc.headers if isinstance(exc, AppError) else None
    return status_of(exc), {"detail": message_of(exc), **extra}, headers


def http_exception(exc: BaseException):
    """FastAPI's ``HTTPException`` for ``exc`` (extra JSON fields travel in a ``ClientMessage`` detail)."""
    from fastapi import HTTPException

    status, body, headers = answer(exc)
    detail = body.pop("detail")
    return HTTPException(status_code=status, detail=ClientMessage(detail, **body) if body else detail, headers=headers)


def json_response(exc: BaseException):
    """Starlette's ``JSONResponse`` for ``exc`` (for exception handlers and ASGI middleware)."""
    from starlette.responses import JSONResponse

    status, body, headers = answer(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def text_response(exc: BaseException):
    """Starlette's ``PlainTextResponse`` for ``exc`` (``Internal Server Error`` for anything not in the table)."""
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(message_of(exc), status_code=status_of(exc))


class ClientMessage(str):
    """A message with more JSON fields: answered as ``{"detail": message, **extra}`` (e.g. ``nearest_labels``)."""

    def __new__(cls, message: str, **extra: Any):
        obj = super().__new__(cls, message)
        obj.extra = extra
        return obj
