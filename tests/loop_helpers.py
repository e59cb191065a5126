"""REST steps of the annotate -> train loop shared by its tests: save a final label, train and wait, hash a file."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import requests
from app_fixtures import infer


def ok(response: requests.Response, server) -> requests.Response:
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}\nlog:\n{server.log()[-4000:]}"
    return response


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def studies(server) -> dict:
    """{study id: has a final label} as the app lists them."""
    listed = ok(requests.get(f"{server.url}/annotate/api/studies", timeout=120), server).json()["studies"]
    return {s["id"]: s["labelled"] for s in listed}


def save_model_label(server, image: str) -> bytes:
    """Segment ``image`` with the served model and save that mask as its final label (as a viewer's Save does)."""
    res = ok(infer(server.url, image, {"label_prompt": ["anterior hippocampus", "posterior hippocampus"],
                                       "result_extension": ".nii.gz"}, output="image"), server)
    ok(requests.put(f"{server.url}/datastore/label", params={"image": image, "tag": "final"},
                    files={"label": ("label.nii.gz", res.content)}, timeout=300), server)
    return res.content


def train_and_wait(server, request: dict, timeout: float = 600) -> dict:
    """Start ``POST /train/refsam3d`` and wait for the task to end; returns the run's train stats from ``/info``."""
    before = ok(requests.get(f"{server.url}/info/", timeout=120), server).json()["train_stats"].get("refsam3d", {})
    ok(requests.post(f"{server.url}/train/refsam3d", json=request, timeout=120), server)
    deadline, task = time.time() + timeout, {}
    while time.time() < deadline:
        task = requests.get(f"{server.url}/train/", timeout=60).json()
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            break
        time.sleep(1.0)
    assert task.get("status") == "DONE", f"{task}\nlog:\n{server.log()[-4000:]}"
    stats = ok(requests.get(f"{server.url}/info/", timeout=120), server).json()["train_stats"]["refsam3d"]
    assert stats.get("run_id") != before.get("run_id"), "the train stats are still the previous run's"
    return stats
