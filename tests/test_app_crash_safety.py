"""A real server killed with SIGKILL in the middle of ``PUT /datastore/label`` loses nothing (real server, real kill).

The write must be long enough to be hit deterministically: the server runs with ``REFSAM3D_TEST_WRITE_DELAY_S``
(``lib/atomic_files.py``), which sleeps after each 1 MiB copied into the datastore (and each KiB of the index).
It changes the timing only: the same temporary-file-then-rename code runs as in production.  The test waits until
the temporary file of the write is on disk and partly written, then kills the process.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
from app_fixtures import HIPPOCAMPUS_CASES
from server_process import MonaiLabelServer

from monailabel.datastore.local import LocalDatastore

CASE = HIPPOCAMPUS_CASES[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _server(root: Path, tiny_text_encoder: Path, name: str, delay: float = 0.0) -> MonaiLabelServer:
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": str(tiny_text_encoder),
            "use_pretrained_model": "false", "model_dir": str(root / "model"), "preload": "false",
            "skip_trainers": "true", "skip_strategies": "true"}
    env = {"REFSAM3D_TEST_WRITE_DELAY_S": str(delay)} if delay else {}
    return MonaiLabelServer(root / "studies", conf, root / f"{name}.log", env=env).start()


def _put_label(url: str, path: Path, errors: list) -> None:
    try:
        with open(path, "rb") as f:
            requests.put(f"{url}/datastore/label", params={"image": CASE, "tag": "final"},
                         files={"label": ("label.nii.gz", f)}, timeout=120)
    except requests.RequestException as e:  # the server dies under the request: expected
        errors.append(e)


def _kill_when(srv: MonaiLabelServer, folder: Path, pattern: str, label: Path) -> Path:
    """Start the PUT, wait for a partly written temporary file matching ``pattern``, SIGKILL the server."""
    errors: list = []
    thread = threading.Thread(target=_put_label, args=(srv.url, label, errors), daemon=True)
    thread.start()
    deadline, seen = time.time() + 60, None
    while time.time() < deadline and seen is None:
        seen = next((p for p in folder.glob(pattern) if p.stat().st_size > 0), None)
        time.sleep(0.01)
    assert seen is not None, f"no temporary file {pattern} appeared; log:\n{srv.log()[-3000:]}"
    srv.process.send_signal(signal.SIGKILL)
    srv.process.wait(timeout=30)
    srv.stop()
    thread.join(timeout=30)
    return seen


def _check_datastore(studies: Path) -> LocalDatastore:
    index = json.loads((studies / "datastore_v2.json").read_text())  # complete JSON
    assert "final" in index["objects"][CASE]["labels"]
    ds = LocalDatastore(str(studies), extensions=["*.nii.gz", "*.nii"], read_only=True)
    assert ds.list_images() == [CASE]
    return ds


def test_sigkill_during_label_put_keeps_previous_label_and_index(tmp_path, hippocampus_dir, tiny_text_encoder):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(hippocampus_dir / "imagesTr" / f"{CASE}.nii.gz", studies / f"{CASE}.nii.gz")
    img = nib.load(str(studies / f"{CASE}.nii.gz"))
    small, big = tmp_path / "v1.nii.gz", tmp_path / "v2.nii.gz"
    nib.save(nib.Nifti1Image((np.asanyarray(img.dataobj) > 0).astype(np.uint8), img.affine), str(small))
    rng = np.random.default_rng(0)  # random voxels do not compress: ~4 MiB, i.e. four delayed chunks
    nib.save(nib.Nifti1Image(rng.integers(0, 255, (160, 160, 160), dtype=np.uint8), img.affine), str(big))
    label_file = studies / "labels" / "final" / f"{CASE}.nii.gz"

    # 1) a first label saved normally, then killed while the second (bigger) one is being copied in
    srv = _server(tmp_path, tiny_text_encoder, "run1", delay=0.5)
    r = requests.put(f"{srv.url}/datastore/label", params={"image": CASE, "tag": "final"},
                     files={"label": ("label.nii.gz", small.read_bytes())}, timeout=120)
    assert r.status_code == 200, r.text
    v1 = _sha(label_file)
    assert v1 == _sha(small)
    index_before = (studies / "datastore_v2.json").read_text()
    partial = _kill_when(srv, label_file.parent, f".{CASE}.nii.gz.*.partial", big)
    assert _sha(label_file) == v1  # the previous label, untouched
    assert np.asanyarray(nib.load(str(label_file)).dataobj).shape == img.shape  # and loadable
    assert (studies / "datastore_v2.json").read_text() == index_before
    _check_datastore(studies)
    assert partial.exists() and partial.stat().st_size < big.stat().st_size  # really killed mid-write

    # 2) killed while the index is rewritten (after the new label was renamed into place)
    srv = _server(tmp_path, tiny_text_encoder, "run2", delay=0.5)
    _kill_when(srv, studies, ".datastore_v2.json.*.partial", big)
    ds = _check_datastore(studies)
    assert _sha(label_file) in (v1, _sha(big))  # one complete version, never a mixture
    assert ds.get_label_uri(CASE, "final") == str(label_file)
    nib.load(str(label_file)).get_fdata()

    # 3) a restarted server serves the label and ignores the leftovers of the killed writes
    srv = _server(tmp_path, tiny_text_encoder, "run3")
    try:
        got = requests.get(f"{srv.url}/datastore/label", params={"label": CASE, "tag": "final"}, timeout=60)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == _sha(label_file)
        objects = requests.get(f"{srv.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
        assert list(objects) == [CASE] and list(objects[CASE]["labels"]) == ["final"]
        r = requests.put(f"{srv.url}/datastore/label", params={"image": CASE, "tag": "final"},
                         files={"label": ("label.nii.gz", small.read_bytes())}, timeout=120)
        assert r.status_code == 200 and _sha(label_file) == v1  # and saving works again
    finally:
        srv.stop()
