"""Start the real ``monailabel start_server`` on a free 127.0.0.1 port for a test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = REPO_ROOT / "apps" / "refsam3d"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MonaiLabelServer:
    """A running MONAI Label server process; use as a context manager.

    ``conf`` becomes ``--conf key value`` pairs; the server log is written to ``log_path``; ``probe_headers`` go with
    the start-up probe of ``/info/`` (e.g. a bearer token when the server has authentication on).
    """

    def __init__(self, studies: str | Path, conf: Mapping[str, str], log_path: Path,
                 app_dir: Path = APP_DIR, startup_timeout: float = 600.0, env: Mapping[str, str] | None = None,
                 probe_headers: Mapping[str, str] | None = None):
        self.studies = str(studies)
        self.conf = dict(conf)
        self.log_path = Path(log_path)
        self.app_dir = Path(app_dir)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(env or {})
        self.probe_headers = dict(probe_headers or {})
        self.process: subprocess.Popen | None = None

    def start(self) -> "MonaiLabelServer":
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(self.app_dir),
               "--studies", self.studies, "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in self.conf.items():
            cmd += ["--conf", key, str(value)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.extra_env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT))
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"monailabel exited with {self.process.returncode}; log:\n{self.log()[-5000:]}")
            try:
                if requests.get(f"{self.url}/info/", headers=self.probe_headers, timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"monailabel did not answer /info/ within {self.startup_timeout}s; log:\n{self.log()[-5000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "MonaiLabelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
