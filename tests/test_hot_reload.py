"""Hot reload: weights published while the server runs are the weights its masks come from.

A real ``monailabel start_server`` (small preset, msd_hippocampus, offline MiniLM) starts without published weights.
Checkpoints are then published into its model folder the way the train task publishes (a complete file renamed over
``refsam3d_small.pt``). After each publication the served mask must equal, voxel for voxel, the mask the app's own
infer task computes in this process from a fresh model store that holds only the new file -- and differ from the
mask of the weights served before.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from app_fixtures import hippocampus_studies, infer, parse_all, read_volume
from server_process import REPO_ROOT, MonaiLabelServer

SHIPPED = REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt"
SPLIT = REPO_ROOT / "benchmarks" / "results" / "hippocampus_split.json"
CONF = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": "minilm", "use_pretrained_model": "false"}
REQUEST = {"result_extension": ".nii.gz"}  # every label of the set, one label map


@pytest.fixture(scope="module")
def case(hippocampus_dir) -> str:
    return json.loads(SPLIT.read_text())["test"][0]  # held out from the shipped checkpoint's training


@pytest.fixture(scope="module")
def server(tmp_path_factory, hippocampus_dir, case):
    root = tmp_path_factory.mktemp("hot-reload")
    studies = hippocampus_studies(root, hippocampus_dir, [case])
    with MonaiLabelServer(studies, {**CONF, "model_dir": str(root / "model")}, root / "server.log") as srv:
        srv.root, srv.studies_dir, srv.model_dir = root, studies, root / "model"
        srv.published = root / "model" / "refsam3d_small.pt"
        yield srv


def publish(source: Path, published: Path) -> None:
    """What the train task does: write the complete file beside the published one, then rename it over it."""
    tmp = published.with_name(f".{published.name}.publishing")
    shutil.copy(source, tmp)
    os.replace(tmp, published)


def served(server, case: str) -> tuple[np.ndarray, dict]:
    res = infer(server.url, case, REQUEST, output="all")
    assert res.status_code == 200, f"{res.status_code} {res.text[:500]}\n{server.log()[-3000:]}"
    params, image, name = parse_all(res)
    return read_volume(image, name)[0], params


def reference(checkpoint: Path, image: Path, tmp_path: Path) -> np.ndarray:
    """The mask of ``checkpoint`` computed in this process by the app's own config, model store and infer task."""
    from lib.configs.refsam3d import RefSAM3DConfig

    model_dir = tmp_path / f"ref-{time.monotonic_ns()}"
    model_dir.mkdir()
    shutil.copy(checkpoint, model_dir / "refsam3d_small.pt")
    config = RefSAM3DConfig()
    config.init("refsam3d", str(model_dir), dict(CONF), None)
    task = config.infer()["refsam3d"]  # the segmentation task (the click tasks share its model)
    result_file, _ = task({"image": str(image), "device": "cpu", **REQUEST})
    try:
        return np.asanyarray(nib.load(result_file).dataobj)
    finally:
        os.unlink(result_file)


def random_checkpoint(path: Path, seed: int) -> Path:
    """An untrained small model (MiniLM text encoder), saved with the app's ``save_checkpoint``."""
    import torch
    from lib.model import build_refsam3d, save_checkpoint
    from lib.training.runner import resolve_text_encoder

    torch.manual_seed(seed)
    model = build_refsam3d("small", text_encoder=resolve_text_encoder("minilm"))
    return save_checkpoint(model, path, extra={"label_set_name": "msd_hippocampus"})


def test_published_weights_give_the_served_masks_without_restart(server, case, hippocampus_dir, tmp_path):
    image = server.studies_dir / f"{case}.nii.gz"
    base, before = served(server, case)
    assert before["model"]["version"].startswith("base:") and before["model"]["trained"] is False

    # 1) the shipped (trained) checkpoint is published: masks change to what those weights give
    publish(SHIPPED, server.published)
    mask, after = served(server, case)
    assert after["model"]["version"].startswith("published:") and after["model"]["trained"] is True
    assert after["cache"]["encoding"] == "miss"  # new weights: the old encoding is not reused
    expected = reference(SHIPPED, image, tmp_path)
    np.testing.assert_array_equal(mask, expected)
    assert not np.array_equal(mask, base), "the mask did not change when trained weights were published"
    gt = np.asanyarray(nib.load(str(hippocampus_dir / "labelsTr" / f"{case}.nii.gz")).dataobj)
    assert 2 * ((mask > 0) & (gt > 0)).sum() / ((mask > 0).sum() + (gt > 0).sum()) > 0.8  # and they are the trained ones
    info = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refsam3d"]
    assert not any("no trained RefSAM3D weights" in w for w in info["warnings"])
    assert info["weights"]["published_weights"] == str(server.published)

    # 2) another publication replaces those weights in turn (not only the first one is picked up)
    other = random_checkpoint(tmp_path / "other.pt", seed=7)
    time.sleep(0.01)
    publish(other, server.published)
    mask2, again = served(server, case)
    assert again["model"]["version"] != after["model"]["version"]
    np.testing.assert_array_equal(mask2, reference(other, image, tmp_path))
    assert not np.array_equal(mask2, mask)

    # 3) a half-written or corrupt file does not break serving: the previous weights stay in use
    time.sleep(0.01)
    server.published.write_bytes(b"not a checkpoint")
    mask3, broken = served(server, case)
    assert broken["model"]["version"] == again["model"]["version"]
    assert any("could not be loaded" in w for w in broken["warnings"])
    np.testing.assert_array_equal(mask3, mask2)
