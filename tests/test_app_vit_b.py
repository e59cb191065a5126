"""The paper's model (preset vit_b) serves too: a full-size random SAM ViT-B checkpoint in the official format,
a small CT crop, and an offline start that asks for the default CLIP text encoder (not available here), so the
server must fall back to the offline MiniLM and say so in /info and in the log."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import requests
from app_fixtures import infer, parse_all, read_volume
from server_process import MonaiLabelServer


@pytest.fixture(scope="module")
def vit_b_server(tmp_path_factory, totalseg_dir, sam_vit_b_checkpoint):
    root = tmp_path_factory.mktemp("app-vit-b")
    studies = root / "studies"
    studies.mkdir()
    ct = nib.load(str(totalseg_dir / "example_ct_sm.nii.gz"))
    crop = ct.slicer[20:84, 20:84, :]  # 64 x 64 x 30 voxels at 3 mm, geometry kept by nibabel
    nib.save(crop, str(studies / "ct_crop.nii.gz"))
    conf = {
        "preset": "vit_b",
        "label_set": "btcv",
        "sam_checkpoint": str(sam_vit_b_checkpoint),
        "text_encoder": "openai/clip-vit-base-patch16",  # the default; not in the cache and no internet here
        "use_pretrained_model": "true",
        "target_spacing": "3",
        "roi_size": "64",
        "model_dir": str(root / "model"),
    }
    with MonaiLabelServer(studies, conf, root / "server.log") as srv:
        srv.studies_dir = studies
        yield srv


def test_vit_b_serves_with_full_size_sam_weights(vit_b_server):
    srv = vit_b_server
    info = requests.get(f"{srv.url}/info/", timeout=60).json()["models"]["refsam3d"]
    assert info["weights"]["preset"] == "vit_b"
    assert info["weights"]["sam_checkpoint"].endswith("sam_vit_b_random.pth")
    assert len(info["labels"]) == 13 + 1  # BTCV + "free text prompt"
    warnings = " ".join(info["warnings"])
    assert "could not be downloaded" in warnings and "all-MiniLM-L6-v2" in warnings  # offline, said plainly
    assert "all-MiniLM-L6-v2" in srv.log()

    res = infer(srv.url, "ct_crop", {"text_prompt": "CT images, abdominal organ segmentation, spleen",
                                     "threshold": 0.05}, output="all")
    assert res.status_code == 200, f"{res.status_code} {res.text[:500]}\n{srv.log()[-3000:]}"
    params, image, name = parse_all(res)
    assert params["model"]["preset"] == "vit_b"
    assert params["label_names"] == {"spleen": 1}  # the set's prompt for spleen is spleen
    arr, affine = read_volume(image, name)
    crop = nib.load(str(srv.studies_dir / "ct_crop.nii.gz"))
    assert arr.shape == crop.shape == (64, 64, 30)
    np.testing.assert_allclose(affine, crop.affine, atol=1e-3)

    # every label of BTCV on the same study reuses the vit_b encoding
    auto = requests.post(f"{srv.url}/infer/refsam3d", params={"image": "ct_crop", "output": "json"},
                         data={"params": "{}"}, timeout=900).json()
    assert {**auto["label_names"], "free text prompt": 255} == info["labels"] and auto["cache"]["encoding"] == "hit"
