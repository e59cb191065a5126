"""Request bodies over ``max_upload_mb`` -> 413 before they are read whole.

An ASGI middleware put in front of MONAI Label's whole middleware stack: a declared ``Content-Length``
over the limit is answered 413 at once, before any byte of the body is read; a body without one
(chunked) is counted while the application reads it, and answered 413 as soon as the count passes the
limit (whatever the application had started to answer is dropped; nothing past the limit is read).
"""

from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable, Dict

from lib.errors import STATUS, TooLarge

logger = logging.getLogger(__name__)

Message = Dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


class UploadLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _message(self, size: str) -> str:
        return (f"the request body ({size}) is larger than this server accepts "
                f"({self.max_bytes / 2**20:g} MB, --conf max_upload_mb); upload a smaller or compressed file")

    async def _reject(self, send: Send, size: str) -> None:
        body = json.dumps({"detail": self._message(size)}).encode()
        await send({"type": "http.response.start", "status": STATUS[TooLarge],
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            logger.warning(f"413 {scope.get('method')} {scope.get('path')}: Content-Length {int(declared)}")
            return await self._reject(send, f"{int(declared) / 2**20:.1f} MB")

        received, too_large, started = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # the application's answer to the interrupted body (a 500) is replaced by the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            logger.warning(f"413 {scope.get('method')} {scope.get('path')}: body over {self.max_bytes} bytes")
            await self._reject(send, f"more than {self.max_bytes / 2**20:g} MB")


def install_upload_limit(fastapi_app, max_bytes: int) -> bool:
    """Wrap the running server's middleware stack (built when the server started) in ``UploadLimitMiddleware``."""
    stack = getattr(fastapi_app, "middleware_stack", None)
    if stack is None:
        fastapi_app.add_middleware(UploadLimitMiddleware, max_bytes=max_bytes)  # not started yet: built on start
        return True
    if not isinstance(stack, UploadLimitMiddleware):
        fastapi_app.middleware_stack = UploadLimitMiddleware(stack, max_bytes)
    return True
