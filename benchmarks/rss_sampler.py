"""Peak memory of a process tree while something runs (for benchmarks): samples ``/proc`` in a thread."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class PeakRSS:
    """``with PeakRSS(pid) as peak: ...``: ``peak.tree_gib`` is the largest sum of VmRSS over the tree seen
    (sampled every ``interval`` s), ``peak.hwm_gib`` the largest VmHWM (the kernel's own peak) of one process."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.tree_gib = 0.0
        self.hwm_gib = 0.0
        self.start_gib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        pids = process_tree(self.pid)
        rss = sum(_status_kib(p, "VmRSS") for p in pids) / 2**20
        hwm = max((_status_kib(p, "VmHWM") for p in pids), default=0) / 2**20
        self.tree_gib = max(self.tree_gib, rss)
        self.hwm_gib = max(self.hwm_gib, hwm)
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start_gib = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
