"""Start the real ``monailabel start_server`` (directly or through a repository script) on a free 127.0.0.1 port."""

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


def stop_process(process: subprocess.Popen | None, log=None) -> None:
    """Terminate a child process (kill it after 30 s) and close its log file."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if log is not None:
        log.close()


class ServerProcess:
    """A server process answering ``GET <probe_path>`` on a free 127.0.0.1 port; use as a context manager.

    Subclasses give the command (``command()``); its output goes to ``log_path``; ``probe_headers`` go with
    the start-up probe of ``/info/`` (e.g. a bearer token when the server has authentication on).
    """

    probe_path = "/info/"

    def __init__(self, log_path: Path, startup_timeout: float = 600.0, env: Mapping[str, str] | None = None,
                 probe_headers: Mapping[str, str] | None = None):
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(env or {})
        self.probe_headers = dict(probe_headers or {})
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "ServerProcess":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.extra_env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        cwd=str(REPO_ROOT))
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; log:\n{self.log()[-5000:]}")
            try:
                if requests.get(f"{self.url}{self.probe_path}", headers=self.probe_headers, timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the server did not answer {self.probe_path} within {self.startup_timeout}s; log:\n{self.log()[-5000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, getattr(self, "_log", None))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MonaiLabelServer(ServerProcess):
    """The real ``monailabel start_server`` with the app; ``conf`` becomes ``--conf key value`` pairs."""

    def __init__(self, studies: str | Path, conf: Mapping[str, str], log_path: Path,
                 app_dir: Path = APP_DIR, startup_timeout: float = 600.0, env: Mapping[str, str] | None = None,
                 probe_headers: Mapping[str, str] | None = None):
        super().__init__(log_path, startup_timeout, env, probe_headers)
        self.studies = str(studies)
        self.conf = dict(conf)
        self.app_dir = Path(app_dir)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(self.app_dir),
               "--studies", self.studies, "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in self.conf.items():
            cmd += ["--conf", key, str(value)]
        return cmd


class ScriptServer(ServerProcess):
    """A start-up script of the repository (``bash <script> <args>``), told its port with ``HOST`` / ``PORT``."""

    def __init__(self, script: Path, args: list[str], log_path: Path, startup_timeout: float = 600.0,
                 env: Mapping[str, str] | None = None):
        super().__init__(log_path, startup_timeout, env)
        self.script, self.args = Path(script), list(args)
        self.extra_env.update({"HOST": "127.0.0.1", "PORT": str(self.port)})

    def command(self) -> list[str]:
        return ["bash", str(self.script), *self.args]
