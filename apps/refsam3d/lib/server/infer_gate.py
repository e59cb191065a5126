"""``/infer`` off the event loop, with bounded concurrency and a bounded queue.

MONAI Label 0.8.5 declares ``POST /infer/{model}`` as ``async def`` and runs the whole (synchronous)
inference inside it, on the event loop: while one study is segmented, ``/info``, ``/datastore``, the
OHIF files and every other request wait.  ``offload_infer_route`` replaces that route, at start-up, by
one with the same parameters, dependencies (auth) and answers whose handler awaits MONAI Label's own
``run_inference`` in an ``InferenceGate``: a thread pool of ``max_concurrent_infers`` workers whose
queue holds at most ``max_queued_infers`` requests; one more is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import inspect
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict

from fastapi.routing import APIRoute

from lib.errors import Unavailable, http_exception

logger = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``: hand the freed heap of an inference's temporaries back to the system."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda: None
    return lambda: trim(0)


release_free_memory = _malloc_trim()


class QueueFullError(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class InferenceGate:
    """Runs callables in ``max_concurrent`` threads; admits at most ``max_queued`` more waiting for one."""

    def __init__(self, max_concurrent: int, max_queued: int):
        self.max_concurrent, self.max_queued = max_concurrent, max_queued
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="refsam3d-infer")
        self._lock = threading.Lock()
        self._admitted = self._running = 0
        self._served = self._rejected = 0
        self._mean_s = 0.0  # moving average of one request's run time, for Retry-After

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            return {"max_concurrent": self.max_concurrent, "max_queued": self.max_queued, "running": self._running,
                    "waiting": self._admitted - self._running, "served": self._served, "rejected": self._rejected,
                    "mean_seconds": round(self._mean_s, 2)}

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.max_concurrent + self.max_queued:
                self._rejected += 1
                ahead = self._admitted - self.max_concurrent + 1  # requests to finish before a new one could start
                estimate = (self._mean_s or 10.0) * ahead / self.max_concurrent
                raise QueueFullError(max(1, min(3600, math.ceil(estimate))))
            self._admitted += 1

    def _run(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            self._running += 1
        start = time.perf_counter()
        try:
            return fn()
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self._running -= 1
                self._admitted -= 1
                self._served += 1
                self._mean_s = elapsed if self._served == 1 else 0.8 * self._mean_s + 0.2 * elapsed
            release_free_memory()  # the volume-sized temporaries freed by this request

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in a worker thread; raises ``QueueFullError`` at once when the queue is full."""
        self._admit()
        try:
            future = self._pool.submit(self._run, fn)
        except BaseException:
            with self._lock:
                self._admitted -= 1
            raise
        future.add_done_callback(self._forget_if_cancelled)  # a client gone while waiting frees its place
        return await asyncio.wrap_future(future)

    def _forget_if_cancelled(self, future) -> None:
        if future.cancelled():
            with self._lock:
                self._admitted -= 1


def _find_route(router, endpoint: Callable):
    """(router owning it, route) of the APIRoute serving ``endpoint``, searching included routers too."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.endpoint is endpoint:
            return router, route
        inner = getattr(route, "original_router", None)  # FastAPI >= 0.12x keeps included routers whole
        found = _find_route(inner, endpoint) if inner is not None else None
        if found:
            return found
    return None


def _replace_route(fastapi_app, owner, old: APIRoute, endpoint: Callable) -> None:
    new = APIRoute(old.path, endpoint, methods=list(old.methods), name=old.name, tags=old.tags, summary=old.summary,
                   description=old.description, responses=old.responses, dependencies=old.dependencies,
                   response_class=old.response_class, include_in_schema=old.include_in_schema,
                   dependency_overrides_provider=old.dependency_overrides_provider)
    owner.routes[owner.routes.index(old)] = new
    mark_changed = getattr(owner, "_mark_routes_changed", None)  # routers that cache their effective routes
    if mark_changed:
        mark_changed()
    fastapi_app.openapi_schema = None


def offload_infer_route(fastapi_app, gate: InferenceGate) -> bool:
    """Make ``POST /infer/{model}`` run MONAI Label's ``run_inference`` through ``gate`` (False if not found)."""
    from monailabel.endpoints import infer as infer_endpoint

    run_inference = infer_endpoint.run_inference
    accepted = set(inspect.signature(run_inference).parameters)
    found = _find_route(fastapi_app.router, infer_endpoint.api_run_inference)
    if found is None:
        return False
    owner, old = found

    async def api_run_inference(**kwargs):
        args = {k: v for k, v in kwargs.items() if k in accepted}
        try:
            return await gate.run(lambda: run_inference(**args))
        except QueueFullError as e:
            raise http_exception(Unavailable(
                f"the server is busy: {gate.max_concurrent} inferences running and {gate.max_queued} waiting; "
                f"retry in about {e.retry_after} s", headers={"Retry-After": str(e.retry_after)})) from None

    api_run_inference.__signature__ = inspect.signature(infer_endpoint.api_run_inference)
    api_run_inference.__doc__ = infer_endpoint.api_run_inference.__doc__
    _replace_route(fastapi_app, owner, old, api_run_inference)
    logger.info(f"RefSAM3D: /infer runs in {gate.max_concurrent} worker thread(s), at most {gate.max_queued} queued")
    return True
