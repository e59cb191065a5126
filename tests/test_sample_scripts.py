"""Smoke tests of the two documented start-up scripts: start, ``/info``, one inference, stop.

They run offline (``OFFLINE=1``: the sample studies come from ``../shared/data``), on a free port (``HOST`` /
``PORT``), into temporary studies and model folders (``STUDIES``, ``MODEL_DIR``, ``--conf model_dir``), with the
existing environment (``SKIP_SETUP=1``: ``scripts/setup.sh`` itself runs at the start of every test run).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import requests
from app_fixtures import infer, parse_all, read_volume
from server_process import REPO_ROOT, ScriptServer


def _stop_and_check(server: ScriptServer) -> None:
    server.stop()
    assert server.process.returncode is not None
    try:
        requests.get(f"{server.url}/info/", timeout=5)
        raise AssertionError("the server still answers after it was stopped")
    except requests.ConnectionError:
        pass


def test_start_server_script_serves_the_offline_sample_studies(tmp_path, shared_data):
    env = {"OFFLINE": "1", "SKIP_SETUP": "1", "STUDIES": str(tmp_path / "studies")}
    args = ["--conf", "preset", "small", "--conf", "model_dir", str(tmp_path / "model")]  # small: fast on a CPU
    server = ScriptServer(REPO_ROOT / "sample-data" / "start_server.sh", args, tmp_path / "server.log", env=env)
    with server:
        log = server.log()
        assert "OFFLINE sample studies ready" in log, log[-3000:]
        info = requests.get(f"{server.url}/info/", timeout=60).json()
        model = info["models"]["refsam3d"]
        assert model["label_set"] == "btcv" and model["labels"]["liver"] == 6
        datastore = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()
        assert {"example_ct", "example_ct_sm"} <= set(datastore["objects"])  # copies of ../shared/data
        res = infer(server.url, "example_ct_sm", {"text_prompt": "liver", "threshold": 0.05}, output="all")
        assert res.status_code == 200, f"{res.status_code} {res.text[:500]}\n{server.log()[-3000:]}"
        params, image, name = parse_all(res)
        mask, _ = read_volume(image, name)
        assert params["label_names"] == {"liver": 6} and mask.shape == nib.load(
            str(tmp_path / "studies" / "example_ct_sm.nii.gz")).shape
    _stop_and_check(server)


def test_hippocampus_demo_script_segments_a_held_out_case(tmp_path, hippocampus_dir):
    env = {"OFFLINE": "1", "SKIP_SETUP": "1", "CASES": "1", "STUDIES": str(tmp_path / "studies"),
           "MODEL_DIR": str(tmp_path / "model")}
    server = ScriptServer(REPO_ROOT / "sample-data" / "start_hippocampus_demo.sh", [], tmp_path / "server.log", env=env)
    case = json.loads((REPO_ROOT / "benchmarks" / "results" / "hippocampus_split.json").read_text())["test"][0]
    with server:
        info = requests.get(f"{server.url}/info/", timeout=60).json()["models"]["refsam3d"]
        assert info["label_set"] == "msd_hippocampus"
        assert info["weights"]["published_weights"] == str(tmp_path / "model" / "refsam3d_small.pt")
        res = infer(server.url, case, {"text_prompt": "posterior hippocampus", "result_extension": ".nii.gz"},
                    output="image")
        assert res.status_code == 200, f"{res.status_code} {res.text[:500]}\n{server.log()[-3000:]}"
        mask, _ = read_volume(res.content, "mask.nii.gz")
        gt = np.asanyarray(nib.load(str(hippocampus_dir / "labelsTr" / f"{case}.nii.gz")).dataobj) == 2
        dice = 2 * ((mask > 0) & gt).sum() / ((mask > 0).sum() + gt.sum())
        assert dice > 0.75, dice  # the demo really segments (the checkpoint's test Dice is 0.89)
    _stop_and_check(server)
