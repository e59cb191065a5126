"""GET /train/ while a task prints: MONAI Label's task dict holds the task's last output lines in a deque that its
reader thread appends to; the status the endpoint encodes must be a snapshot (lib/server/task_status.py)."""

from __future__ import annotations

from collections import deque

import pytest
from fastapi.encoders import jsonable_encoder


@pytest.fixture
def running_task(monkeypatch):
    from monailabel.utils.async_tasks import utils

    task = {"id": "t1", "status": "RUNNING", "details": deque(["epoch 1", "epoch 2"], maxlen=20)}
    monkeypatch.setitem(utils.background_tasks, "train", [task])
    return task


@pytest.fixture
def original_status(monkeypatch):
    from monailabel.utils.async_tasks.task import AsyncTask

    monkeypatch.setattr(AsyncTask, "status", AsyncTask.__dict__["status"])  # restored after the test
    return AsyncTask.status


def _read_while_a_line_arrives(task: dict, status: dict) -> list[str]:
    """Iterate the returned lines as the JSON encoder does, the reader thread appending one meanwhile."""
    seen = []
    for line in status["details"]:
        task["details"].append("epoch 3")
        seen.append(line)
    return seen


def test_monai_labels_own_status_breaks_when_a_line_arrives(running_task, original_status):
    status, _ = original_status("train")
    with pytest.raises(RuntimeError, match="deque mutated during iteration"):
        _read_while_a_line_arrives(running_task, status)  # the likely cause of the 500 on GET /train/ in CI


def test_status_is_a_snapshot_after_install(running_task, original_status):
    from monailabel.utils.async_tasks.task import AsyncTask

    from lib.server.task_status import install_task_status_snapshots

    assert install_task_status_snapshots() and install_task_status_snapshots()  # idempotent
    status, detail = AsyncTask.status("train")
    assert detail is None and status["id"] == "t1" and status["status"] == "RUNNING"
    assert _read_while_a_line_arrives(running_task, status) == ["epoch 1", "epoch 2"]
    assert list(running_task["details"]) == ["epoch 1", "epoch 2", "epoch 3", "epoch 3"]  # the task itself goes on
    assert jsonable_encoder(AsyncTask.status("train", all=True)[0])[0]["details"][-1] == "epoch 3"
    none, message = AsyncTask.status("scoring")
    assert none is None and "No Scoring Tasks Found" in message  # MONAI Label's answers otherwise unchanged
