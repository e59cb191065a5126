"""The ``--conf`` keys that bound the server's work: concurrency, queue, upload size, volume size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from lib.configs.refsam3d import conf_number


@dataclass(frozen=True)
class ServerLimits:
    max_concurrent_infers: int = 2
    max_queued_infers: int = 8
    max_upload_mb: float = 2048.0
    max_voxels: int = 1_000_000_000

    @classmethod
    def from_conf(cls, conf: Dict[str, str]) -> "ServerLimits":
        """Read the keys (raises ``ConfError`` with a readable message for a bad value)."""
        d = cls()
        return cls(
            max_concurrent_infers=int(conf_number(conf, "max_concurrent_infers", d.max_concurrent_infers, 1, 64, int)),
            max_queued_infers=int(conf_number(conf, "max_queued_infers", d.max_queued_infers, 0, 10_000, int)),
            max_upload_mb=float(conf_number(conf, "max_upload_mb", d.max_upload_mb, 0.001, 1e7)),
            max_voxels=int(conf_number(conf, "max_voxels", d.max_voxels, 1, 1e13, int)),
        )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
