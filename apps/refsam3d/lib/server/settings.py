"""The ``--conf`` keys that bound the server's work: concurrency, queue, upload size, volume size.

Parsed with the other keys by ``lib/settings.py:AppSettings.from_conf`` (its ``limits`` field).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerLimits:
    max_concurrent_infers: int = 2
    max_queued_infers: int = 8
    max_upload_mb: float = 2048.0
    max_voxels: int = 1_000_000_000

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
