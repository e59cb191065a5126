"""Published weights are never lost: each training run keeps what it replaces as a version, and one call restores it.

Layout beside the published file ``model/refsam3d_<preset>.pt``::

    model/versions/refsam3d_<preset>/<id>.pt      the weights served before a run (or a restore) replaced them
    model/versions/refsam3d_<preset>/versions.json  {"versions": [newest first ...]}: id, when, why, and what the
                                                    weights were (label set, validation / test Dice, run id)

The first publish of a run archives the file it is about to replace (later, better publishes of the same run
replace the run's own earlier ones); a restore archives the served file too, then puts the version back with
an atomic rename, so the serving ``ModelStore`` reloads it on its next request.  At most ``keep`` versions stay.
Writers are serialised with a file lock (training runs in another process than the server).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from lib.atomic_files import atomic_write_text, new_file_mode

DEFAULT_KEEP = 5


def describe_weights(path: Path) -> Dict[str, Any]:
    """What a checkpoint file is (label set, validation / test Dice, the run that made it); never raises."""
    from lib.weights_card import summarise_extra, trained_flip_axes

    with open(path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    out: Dict[str, Any] = {"bytes": path.stat().st_size, "sha256": sha256}
    try:
        from lib.model import read_checkpoint

        extra = read_checkpoint(str(path)).get("extra") or {}
        out.update(summarise_extra(extra, trained_flip_axes(extra)))  # the test Dice as served by default
    except Exception as e:  # noqa: BLE001 - an unreadable file is kept all the same
        out["unreadable"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


class VersionNotFound(KeyError):
    pass


class WeightsHistory:
    """The versions kept for one published weights file."""

    def __init__(self, published_path: str | os.PathLike, keep: int = DEFAULT_KEEP):
        self.published = Path(published_path)
        self.folder = self.published.parent / "versions" / self.published.stem
        self.manifest = self.folder / "versions.json"
        self.keep = max(1, int(keep))

    # ------------------------------------------------------------------ reading
    def versions(self) -> List[Dict[str, Any]]:
        """Kept versions, newest first (each with ``id``, ``archived``, ``reason`` and the weights' facts)."""
        try:
            data = json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return []
        return [v for v in data.get("versions", []) if (self.folder / v.get("file", "")).is_file()]

    def get(self, version_id: str) -> Dict[str, Any]:
        for v in self.versions():
            if v["id"] == version_id:
                return v
        known = ", ".join(v["id"] for v in self.versions()) or "none kept yet"
        raise VersionNotFound(f"no weights version {version_id!r} (kept versions: {known})")

    # ------------------------------------------------------------------ writing
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, versions: List[Dict[str, Any]]) -> None:
        atomic_write_text(self.manifest, json.dumps({"published": self.published.name, "versions": versions}, indent=1))

    def archive_current(self, reason: str) -> Optional[Dict[str, Any]]:
        """Keep the served file as a version (a hard link: the publish that follows renames a new file over it)."""
        if not self.published.is_file():
            return None
        with self._locked():
            now = datetime.datetime.now()
            facts = describe_weights(self.published)
            vid = f"{now:%Y%m%d-%H%M%S}-{facts['sha256'][:8]}"
            dest = self.folder / f"{vid}.pt"
            versions = self.versions()
            if any(v.get("sha256") == facts["sha256"] for v in versions[:1]):
                return versions[0]  # the newest version already holds these very weights
            try:
                os.link(self.published, dest)
            except OSError:
                shutil.copy2(self.published, dest)
            entry = {"id": vid, "file": dest.name, "archived": now.isoformat(timespec="seconds"), "reason": reason,
                     **facts}
            versions.insert(0, entry)
            for old in versions[self.keep:]:
                (self.folder / old["file"]).unlink(missing_ok=True)
            self._write(versions[: self.keep])
            return entry

    def restore(self, version_id: str) -> Dict[str, Any]:
        """Serve ``version_id`` again; what was served is archived first.  Returns the restored version."""
        entry = self.get(version_id)
        fd, tmp = tempfile.mkstemp(prefix=self.published.name + ".", suffix=".restore", dir=str(self.published.parent))
        os.close(fd)
        try:
            # copied first: archiving the served file may prune the very version being restored
            shutil.copyfile(self.folder / entry["file"], tmp)  # a new mtime: the serving ModelStore reloads it
            os.chmod(tmp, new_file_mode())  # mkstemp's 0600 would hide the weights from other readers
            self.archive_current(f"replaced by the restore of version {version_id}")
            os.replace(tmp, self.published)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return entry
