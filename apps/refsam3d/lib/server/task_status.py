"""Train / scoring task status that can be read while the task runs.

MONAI Label keeps a running task's last output lines in a ``deque`` that its reader thread appends to, and
``GET /train/`` (``AsyncTask.status``) returns the task dict as it is: FastAPI then encodes that deque item by item
in Python, so a line appended meanwhile raises ``RuntimeError: deque mutated during iteration`` and the poll gets a
500. The shorter GIL switch interval the server uses (``install.py``) makes that switch likely. Here status returns
a copy of each task whose ``details`` is a list taken in one step (``list(deque)`` runs in C, under the GIL).
"""

from __future__ import annotations

from collections import deque
from typing import Any


def task_snapshot(task: Any) -> Any:
    """A shallow copy of a task dict with its ``details`` deque as a list; anything else unchanged."""
    if not isinstance(task, dict) or not isinstance(task.get("details"), deque):
        return task
    return {**task, "details": list(task["details"])}


def install_task_status_snapshots() -> bool:
    """Make ``AsyncTask.status`` return snapshots (idempotent); False when MONAI Label's task module is absent."""
    try:
        from monailabel.utils.async_tasks.task import AsyncTask
    except ImportError:
        return False
    original = AsyncTask.status
    if getattr(original, "_refsam3d_snapshots", False):
        return True

    def status(method: str, all: bool = False, check_if_running: bool = False):  # noqa: A002 - MONAI Label's name
        result, detail = original(method, all, check_if_running)
        if isinstance(result, list):
            return [task_snapshot(t) for t in result], detail
        return task_snapshot(result), detail

    status._refsam3d_snapshots = True  # type: ignore[attr-defined]
    AsyncTask.status = staticmethod(status)
    return True
