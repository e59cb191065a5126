"""A training run killed at any moment leaves the previously published model loadable (real CLI subprocess)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start(published: Path, data: Path, tiny_text_encoder: Path, log: Path, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--data", str(data), "--max-cases", "3",
           "--val-split", "0", "--publish", "last", "--epochs", "1000", "--roi", "32", "--crop", "32",
           "--batch-size", "1", "--text-encoder", str(tiny_text_encoder), "--init", str(published),
           "--output", str(published), "--threads", "1", "--no-progress", *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=str(REPO))


def _kill(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_killed_training_leaves_published_model_loadable(tmp_path, hippocampus_dir, tiny_text_encoder):
    import torch

    from lib.model import build_refsam3d, load_checkpoint, save_checkpoint

    published = tmp_path / "model" / "refsam3d_small.pt"
    torch.manual_seed(0)
    save_checkpoint(build_refsam3d("small", text_encoder=str(tiny_text_encoder)), published,
                    extra={"label_set_name": "msd_hippocampus"})
    original = _sha(published)

    # 1) killed before its first publication: the published file is untouched
    proc = _start(published, hippocampus_dir, tiny_text_encoder, tmp_path / "run1.log")
    deadline = time.time() + 120
    while time.time() < deadline and "Training run" not in (tmp_path / "run1.log").read_text():
        assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
        time.sleep(0.2)
    _kill(proc)
    assert _sha(published) == original
    load_checkpoint(published)

    # 2) killed while training and publishing every epoch: the file is always a complete checkpoint
    #    (with bf16 autocast on the CPU, as the benchmark trains; the weights are still stored in fp32)
    proc = _start(published, hippocampus_dir, tiny_text_encoder, tmp_path / "run2.log", "--amp-cpu")
    deadline = time.time() + 240
    publications = 0
    while time.time() < deadline and publications < 2:
        assert proc.poll() is None, (tmp_path / "run2.log").read_text()[-3000:]
        publications = (tmp_path / "run2.log").read_text().count("Published model")
        time.sleep(0.05)
    assert publications >= 2, (tmp_path / "run2.log").read_text()[-3000:]
    time.sleep(0.3)  # somewhere in the next epoch (which may be publishing)
    _kill(proc)
    assert _sha(published) != original  # the run did publish ...
    model = load_checkpoint(published)  # ... and what is there loads
    assert model.checkpoint_extra["training"]["epoch"] >= 2
    assert model.checkpoint_extra["label_set_name"] == "msd_hippocampus"
    assert model.checkpoint_extra["training"]["config"]["amp_cpu"] is True  # --amp-cpu reached the run
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # no temporary file replaced the published one; leftovers of the killed write are only hidden temp files
    assert all(p.name.startswith(".") for p in published.parent.iterdir() if p != published and p.is_file())
