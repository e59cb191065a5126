"""The network cannot be built (a text-encoder folder without weights): /info says why, inference answers 503.

A real ``monailabel start_server``; the configured text encoder is a Hugging Face folder with a ``config.json`` and
a tokenizer but no weights file, as a half-finished download leaves it.
"""

from __future__ import annotations

import shutil

import pytest
import requests
from app_fixtures import build_studies, infer, write_label_set
from server_process import MonaiLabelServer


@pytest.fixture(scope="module")
def server(tmp_path_factory, totalseg_dir, hippocampus_dir, tiny_text_encoder):
    root = tmp_path_factory.mktemp("app-unavailable")
    studies = build_studies(root / "studies", totalseg_dir, hippocampus_dir, cases=())
    broken = root / "text-encoder-without-weights"
    shutil.copytree(tiny_text_encoder, broken, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    conf = {"preset": "small", "label_set": str(write_label_set(root / "labels.json")), "text_encoder": str(broken),
            "use_pretrained_model": "false", "model_dir": str(root / "model")}
    with MonaiLabelServer(studies, conf, root / "server.log") as srv:
        srv.broken = broken
        yield srv


def test_inference_answers_503_with_the_reason_and_the_server_keeps_serving(server):
    for _ in range(2):  # the second request tries again (and fails again) instead of hanging or crashing
        res = infer(server.url, "example_ct_sm", {"text_prompt": "liver"}, timeout=300)
        assert res.status_code == 503, f"{res.status_code} {res.text[:500]}\n{server.log()[-3000:]}"
        detail = res.json()["detail"]
        assert "network is not available" in detail and "Traceback" not in detail, detail
    info = requests.get(f"{server.url}/info/", timeout=60)
    assert info.status_code == 200
    warnings = info.json()["models"]["refsam3d"]["warnings"]
    assert any("could not be built" in w for w in warnings), warnings
    bad = infer(server.url, "example_ct_sm", {"text_prompt": "   "})  # request errors are still told apart
    assert bad.status_code == 422, bad.text[:300]
