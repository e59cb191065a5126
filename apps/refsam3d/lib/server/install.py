"""Wire the limits into the running MONAI Label server (called once by the app at start-up).

* ``infer_gate``: ``/infer`` in worker threads, bounded concurrency and queue, 503 + ``Retry-After`` beyond;
* ``upload_limit``: bodies over ``max_upload_mb`` -> 413 before they are read whole;
* ``volume_header`` (called per request by the app): volumes declaring more than ``max_voxels`` -> 422;
* ``task_status``: ``GET /train/`` returns a snapshot of a running task's output lines (no 500 mid-append).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional

from lib.server.infer_gate import InferenceGate, offload_infer_route
from lib.server.settings import ServerLimits
from lib.server.task_status import install_task_status_snapshots
from lib.server.upload_limit import install_upload_limit

logger = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.0005


def running_fastapi_app() -> Optional[Any]:
    """MONAI Label's FastAPI application (``monailabel.app.app``) when the server is running it, else None."""
    module = sys.modules.get("monailabel.app")
    return getattr(module, "app", None) if module else None


def install_server_limits(limits: ServerLimits) -> InferenceGate:
    """The inference gate, with ``/infer`` routed through it and the upload limit in front, when a server runs."""
    gate = InferenceGate(limits.max_concurrent_infers, limits.max_queued_infers)
    fastapi_app = running_fastapi_app()
    if fastapi_app is None:
        return gate  # used as a library (tests, scripts): no HTTP routes to change
    # inference threads hold the GIL between torch calls; a shorter switch interval than Python's 5 ms lets the
    # event loop and the other endpoints' threads in sooner (benchmarks/bench_responsiveness.py)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if not offload_infer_route(fastapi_app, gate):
        logger.warning("RefSAM3D: POST /infer/{model} not found; inference stays on the event loop")
    install_upload_limit(fastapi_app, limits.max_upload_bytes)
    install_task_status_snapshots()  # GET /train/ while a task prints: no "deque mutated during iteration" 500
    logger.info(f"RefSAM3D: uploads up to {limits.max_upload_mb:g} MB, volumes up to {limits.max_voxels:,} voxels")
    return gate
