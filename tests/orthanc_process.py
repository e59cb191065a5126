"""A real Orthanc PACS (Debian ``orthanc`` + ``orthanc-dicomweb``) on a free 127.0.0.1 port, and storing into it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable

import requests
from server_process import free_port, stop_process

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (None when it can)."""
    if ORTHANC is None or not DICOMWEB_PLUGIN.exists():
        return ("Orthanc with the DICOMweb plugin is not installed (scripts/setup.sh installs the Debian packages "
                "orthanc and orthanc-dicomweb as root)")
    return None


class OrthancServer:
    """A running Orthanc with DICOMweb at ``<url>/dicom-web``, storage under ``root``; use as a context manager."""

    def __init__(self, root: Path, startup_timeout: float = 120.0):
        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> "OrthancServer":
        config = {
            "Name": "RefSAM3DTest", "HttpPort": self.port, "DicomPort": free_port(), "DicomServerEnabled": False,
            "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "orthanc.json").write_text(json.dumps(config))
        self._log = open(self.root / "orthanc.log", "w")
        self.process = subprocess.Popen([ORTHANC, str(self.root / "orthanc.json")], stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer within {self.startup_timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.root / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def store(self, instances: Iterable[bytes]) -> int:
        """POST each DICOM file's bytes to ``/instances``; the number stored."""
        count = 0
        for data in instances:
            r = requests.post(f"{self.url}/instances", data=data, timeout=60)
            assert r.status_code == 200, r.text
            count += 1
        return count

    def stop(self) -> None:
        stop_process(self.process, getattr(self, "_log", None))

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
