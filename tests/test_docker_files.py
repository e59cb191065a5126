"""The Dockerfile, its entrypoint and docker-compose.yml (no Docker daemon here: linted and checked statically,
and the entrypoint starts the real server with ``--conf`` options taken from environment variables)."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from server_process import REPO_ROOT, free_port, stop_process

DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE = REPO_ROOT / "docker-compose.yml"
ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert path, f"{name} is not installed: pip install -r requirements.txt (it is listed there)"
    return path


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in DOCKERFILE.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l.strip() else "")
            for l in text.splitlines() if l.strip()]


def _dockerignored(rel: str) -> bool:
    ignored = False
    for pattern in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = rel.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts)))
        hit = hit or fnmatch.fnmatch(rel, pattern.replace("**/", ""))
        if hit:
            ignored = not negate
    return ignored


def test_hadolint_finds_nothing():
    run = subprocess.run([_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr


def test_shell_scripts_pass_shellcheck():
    scripts = [ENTRYPOINT, REPO_ROOT / "sample-data" / "start_server.sh", REPO_ROOT / "sample-data" / "start_hippocampus_demo.sh"]
    run = subprocess.run([_tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_copy_source_exists_and_reaches_the_build_context():
    copies = [args for op, args in _instructions() if op == "COPY"]
    assert copies
    for args in copies:
        words = [w for w in args.split() if not w.startswith("--")]
        assert "--from" not in args, args
        for src in words[:-1]:
            assert (REPO_ROOT / src).exists(), f"COPY source {src} does not exist"
            assert not _dockerignored(src.rstrip("/")), f"COPY source {src} is excluded by .dockerignore"


def test_image_installs_the_project_requirements_on_the_cuda_of_the_pinned_torch():
    ops = _instructions()
    copied = [a.split()[-1] for op, a in ops if op == "COPY" and a.split()[0] == "requirements.txt"]
    assert copied, "requirements.txt is not copied into the image"
    assert any(op == "RUN" and re.search(rf"pip install .*-r {re.escape(copied[0])}", a) for op, a in ops)
    # the base image's CUDA is the one of the torch build pinned in requirements.txt (and installed here)
    import torch

    pinned = re.search(r"^torch==(\S+)", (REPO_ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert torch.__version__.split("+")[0] == pinned
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+\.\d+)\.\d+-\S*runtime\S*", DOCKERFILE.read_text())
    assert base and torch.version.cuda == base.group(1), (torch.version.cuda, base and base.group(0))


def test_image_runs_as_non_root_with_volumes_port_healthcheck_and_entrypoint():
    ops = dict(_instructions())  # last of each instruction
    user = ops["USER"].strip()
    assert user not in ("root", "0") and not user.startswith("0:")
    assert "/app/model" in ops["VOLUME"] and "/data/studies" in ops["VOLUME"]
    assert ops["EXPOSE"].split() == ["8000"]
    assert "/info/" in ops["HEALTHCHECK"] and "CMD" in ops["HEALTHCHECK"]
    assert ops["ENTRYPOINT"] == '["/app/docker/entrypoint.sh"]'
    assert os.access(ENTRYPOINT, os.X_OK)


def test_compose_stack_orthanc_dicomweb_app_gpu_and_auth_note():
    compose = yaml.safe_load(COMPOSE.read_text())
    orthanc, app = compose["services"]["orthanc"], compose["services"]["refsam3d"]
    assert str(orthanc["environment"]["DICOM_WEB_PLUGIN_ENABLED"]).lower() == "true"
    assert app["build"] == "." and (REPO_ROOT / "Dockerfile").is_file()
    assert app["environment"]["STUDIES"] == "http://orthanc:8042/dicom-web" and "orthanc" in app["depends_on"]
    assert "8000:8000" in app["ports"]
    devices = app["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert any(v.endswith(":/app/model") for v in app["volumes"])
    from lib.settings import conf_table

    documented = {key for key, _ in conf_table()}  # every --conf key the settings object reads (lib/settings.py)
    keys = {k[len("REFSAM3D_CONF_"):].lower() for k in app["environment"] if k.startswith("REFSAM3D_CONF_")}
    assert keys and keys <= documented, keys - documented
    text = COMPOSE.read_text()
    assert "Keycloak" in text and "MONAI_LABEL_AUTH_ENABLE" in text and "/ohif/" in text


def test_entrypoint_starts_the_server_with_conf_from_environment(tmp_path, hippocampus_dir):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(hippocampus_dir / "imagesTr" / "hippocampus_004.nii.gz", studies)
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "STUDIES": str(studies), "HOST": "127.0.0.1", "PORT": str(port),
           "REFSAM3D_CONF_PRESET": "small", "REFSAM3D_CONF_LABEL_SET": "msd_hippocampus",
           "REFSAM3D_CONF_TEXT_ENCODER": "minilm", "REFSAM3D_CONF_USE_PRETRAINED_MODEL": "false",
           "REFSAM3D_CONF_MODEL_DIR": str(tmp_path / "model"), "REFSAM3D_CONF_PRELOAD": "false"}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(tmp_path))
    try:
        info, deadline = None, time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            try:
                info = requests.get(f"http://127.0.0.1:{port}/info/", timeout=5).json()
                break
            except requests.RequestException:
                time.sleep(1)
        output = (tmp_path / "server.log").read_text()
        assert info is not None, f"no answer on /info/ (exit {proc.poll()}):\n{output[-4000:]}"
        model = info["models"]["refsam3d"]
        assert model["label_set"] == "msd_hippocampus" and model["weights"]["preset"] == "small"
        assert "minilm" in model["weights"]["text_encoder"].lower()  # the offline all-MiniLM-L6-v2
        assert "--conf preset small" in output and "--studies " + str(studies) in output
    finally:
        stop_process(proc, log)  # the entrypoint exec's the server: this is its process
