"""Publishing is atomic, checked deterministically: a process killed *inside* the checkpoint write.

A child process publishes a model through the publishing code path (``PromptModelAdapter.save`` ->
``save_checkpoint``, what the training engine calls). Its ``torch.save`` is made slow on purpose: after the first
bytes reach the disk, the write announces itself and stalls. The test kills the child at that moment, so the kill
always lands in the middle of the write, and then checks the previously published file.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from server_process import APP_DIR

# the child: a slow torch.save (any target: the temporary file of an atomic write, or the published path itself)
CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from lib.model import build_refsam3d
from lib.training import LabelEntry, PromptModelAdapter, TrainConfig

real_save = torch.save


class StallingFile:
    def __init__(self, f):
        self.f, self.written = f, 0

    def write(self, data):
        n = self.f.write(data)
        self.written += n
        if self.written > 65536:
            self.f.flush()
            os.fsync(self.f.fileno())
            print("INSIDE THE WRITE", flush=True)
            time.sleep(3600)
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)


def slow_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as handle:
            return real_save(obj, StallingFile(handle), *args, **kwargs)
    return real_save(obj, StallingFile(f), *args, **kwargs)


torch.save = slow_save
torch.manual_seed(1)
model = build_refsam3d("small", text_encoder=sys.argv[3])
adapter = PromptModelAdapter(model, [LabelEntry("a", 1, "a")], TrainConfig(), roi_size=(32, 32, 32), device="cpu")
adapter.save(sys.argv[2], extra={"label_set_name": "new"})
print("WRITE FINISHED", flush=True)
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_inside_the_checkpoint_write_leaves_the_published_model_intact(tmp_path, tiny_text_encoder):
    import torch
    from lib.model import build_refsam3d, load_checkpoint, save_checkpoint

    published = tmp_path / "model" / "refsam3d_small.pt"
    torch.manual_seed(0)
    save_checkpoint(build_refsam3d("small", text_encoder=str(tiny_text_encoder)), published,
                    extra={"label_set_name": "previous"})
    before = _sha(published)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(APP_DIR), str(published), str(tiny_text_encoder)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in child.stdout:  # blocks until the child is inside the write (or ends)
            lines.append(line)
            if "INSIDE THE WRITE" in line:
                break
        assert lines and "INSIDE THE WRITE" in lines[-1], "".join(lines)[-3000:]
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    assert _sha(published) == before, "the killed write changed the published model"
    model = load_checkpoint(published, text_encoder=str(tiny_text_encoder))
    assert model.checkpoint_extra["label_set_name"] == "previous"
    # the interrupted write went to a hidden temporary file beside it, which the server never loads
    leftovers = [p for p in published.parent.iterdir() if p != published]
    assert leftovers and all(p.name.startswith(".") for p in leftovers), leftovers
    assert all(p.stat().st_size > 65536 for p in leftovers)  # the kill really landed inside the write
