"""A real Orthanc PACS (Debian ``orthanc`` + ``orthanc-dicomweb``) on a free 127.0.0.1 port, and storing into it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import requests
from server_process import ServerProcess, free_port

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (None when it can)."""
    if ORTHANC is None or not DICOMWEB_PLUGIN.exists():
        return ("Orthanc with the DICOMweb plugin is not installed (scripts/setup.sh installs the Debian packages "
                "orthanc and orthanc-dicomweb as root)")
    return None


class OrthancServer(ServerProcess):
    """A running Orthanc with DICOMweb at ``<url>/dicom-web``, storage under ``root``; use as a context manager."""

    probe_path = "/system"

    def __init__(self, root: Path, startup_timeout: float = 120.0):
        self.root = Path(root)
        super().__init__(self.root / "orthanc.log", startup_timeout)

    def command(self) -> list[str]:
        config = {
            "Name": "RefSAM3DTest", "HttpPort": self.port, "DicomPort": free_port(), "DicomServerEnabled": False,
            "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "orthanc.json").write_text(json.dumps(config))
        return [ORTHANC, str(self.root / "orthanc.json")]

    def store(self, instances: Iterable[bytes]) -> int:
        """POST each DICOM file's bytes to ``/instances``; the number stored."""
        count = 0
        for data in instances:
            r = requests.post(f"{self.url}/instances", data=data, timeout=60)
            assert r.status_code == 200, r.text
            count += 1
        return count
