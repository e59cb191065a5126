"""Crash-safe file writes: a hidden temporary file in the destination folder, fsync, then ``os.replace``.

A reader (or a server restarted after SIGKILL) sees either the previous file or the complete new one, never a
half-written file.  Temporary names are ``.<name>.<random>.partial``: hidden, and matching none of the image
extensions that MONAI Label's datastore scans or watches, so a leftover of a killed write is never taken for data.

``REFSAM3D_TEST_WRITE_DELAY_S`` (tests only): seconds to sleep after each 1 MiB chunk copied, so that a test can
kill the real server while a write is in progress.  It changes the timing only, never the code path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Union

CHUNK = 1 << 20
TEST_DELAY_ENV = "REFSAM3D_TEST_WRITE_DELAY_S"


def new_file_mode(directory: bool = False) -> int:
    """What ``open()`` (0666) or ``mkdir()`` (0777) would create under the process's umask.

    For files made by ``mkstemp`` / ``mkdtemp`` (always 0600 / 0700) before they are renamed into place.
    """
    return (0o777 if directory else 0o666) & ~_read_umask()


def _read_umask() -> int:
    try:  # Linux: read it without changing it (setting it, even briefly, races with other threads' files)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)  # elsewhere, reading the umask means setting it (pip does the same)
    os.umask(umask)
    return umask


def _test_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(TEST_DELAY_ENV, "0") or 0))
    except ValueError:
        return 0.0


def _atomic(dest: Union[str, Path], fill: Callable[[object], None]) -> str:
    dest = os.fspath(dest)
    folder = os.path.dirname(dest) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".partial", dir=folder)
    try:
        os.fchmod(fd, new_file_mode())  # what open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        _fsync_dir(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_copy(src: Union[str, Path], dest: Union[str, Path]) -> str:
    """Copy ``src`` to ``dest`` so that ``dest`` is always either the old or the complete new file."""
    delay = _test_delay()

    def fill(out) -> None:
        with open(src, "rb") as f:
            if not delay:
                shutil.copyfileobj(f, out, CHUNK)
                return
            for chunk in iter(lambda: f.read(CHUNK), b""):
                out.write(chunk)
                out.flush()
                time.sleep(delay)

    return _atomic(dest, fill)


def atomic_write_text(dest: Union[str, Path], text: str) -> str:
    """Write ``text`` (UTF-8) to ``dest`` atomically."""
    data = text.encode("utf-8")
    delay = _test_delay()

    def fill(out) -> None:
        if not delay:
            out.write(data)
            return
        for i in range(0, len(data), 1024):  # the index is small: a 1 KiB step keeps the delayed write observable
            out.write(data[i : i + 1024])
            out.flush()
            time.sleep(delay)

    return _atomic(dest, fill)
