"""A bounded, thread-safe LRU cache for per-study work that prompts can share.

The infer task keeps two kinds of entries, both keyed so that a stale entry can never be used:

* ``("image", <image identity>, <pre-processing settings>)`` -> the pre-processed volume
  (resampled, normalised ``MetaTensor`` with its transform history for the inverse);
* ``("encoding", <image identity>, <pre-processing settings>, <weights version>, <roi>, <overlap>)``
  -> a dict ``window position -> image encoding`` of the sliding window.

``<image identity>`` is the real path plus size and modification time of the file (or of every
file of a DICOM folder), or a SHA-1 of the content for uploads, so an edited file is a new key and
a re-uploaded file reuses the work.  Sizes are counted in bytes (tensor storage) and the least
recently used entries are evicted when ``max_bytes`` would be exceeded.  ``compute_once(key, fn)``
makes concurrent requests for the same key wait for one computation instead of repeating it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Dict, Hashable, Iterator, Optional, Tuple

import torch


def nbytes(obj: Any, _seen: Optional[set] = None) -> int:
    """Approximate memory held by tensors/arrays inside ``obj`` (dicts, lists, tuples, dataclasses)."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if torch.is_tensor(obj):
        return obj.element_size() * obj.nelement()
    if hasattr(obj, "nbytes") and isinstance(getattr(obj, "nbytes"), int):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(nbytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(nbytes(v, seen) for v in vars(obj).values())
    return 0


def file_identity(path: str, hash_content: bool = False) -> Tuple:
    """Identity of an image file or DICOM folder: real path, sizes and mtimes (or a content hash)."""
    real = os.path.realpath(path)
    if os.path.isdir(real):
        h = hashlib.sha1()
        for entry in sorted(os.scandir(real), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return ("dir", real, h.hexdigest())
    if hash_content:
        h = hashlib.sha1()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return ("content", h.hexdigest())
    st = os.stat(real)
    return ("file", real, st.st_size, st.st_mtime_ns)


class EncodingCache:
    """LRU mapping bounded in bytes; every method is thread-safe."""

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = int(max_bytes)
        self._data: "OrderedDict[Hashable, Tuple[Any, int]]" = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: Dict[Hashable, Tuple[threading.Lock, int]] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._data.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def get(self, key: Hashable) -> Any:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any, size: Optional[int] = None) -> bool:
        """Store ``value``; False (not stored) when it alone is larger than the whole cache."""
        size = nbytes(value) if size is None else int(size)
        with self._lock:
            self._data.pop(key, None)
            if size > self.max_bytes:
                return False
            while self._data and sum(s for _, s in self._data.values()) + size > self.max_bytes:
                self._data.popitem(last=False)
                self.evictions += 1
            self._data[key] = (value, size)
            return True

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key matches (e.g. encodings of superseded weights)."""
        with self._lock:
            stale = [k for k in self._data if predicate(k)]
            for k in stale:
                del self._data[k]
            return len(stale)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    @contextmanager
    def key_lock(self, key: Hashable) -> Iterator[None]:
        """Serialise work on one key (other keys proceed in parallel)."""
        with self._lock:
            lock, users = self._key_locks.get(key, (threading.Lock(), 0))
            self._key_locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._key_locks[key]
                if users <= 1:
                    del self._key_locks[key]
                else:
                    self._key_locks[key] = (lock, users - 1)

    def compute_once(self, key: Hashable, fn: Callable[[], Any], size_fn: Callable[[Any], int] = nbytes) -> Tuple[Any, bool]:
        """(value, hit): the cached value, or ``fn()`` computed once even when several threads ask together."""
        value = self.get(key)
        if value is not None:
            return value, True
        with self.key_lock(key):
            value = self.get(key)
            if value is not None:
                return value, True
            value = fn()
            self.put(key, value, size_fn(value))
            return value, False

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self._data),
                "bytes": sum(s for _, s in self._data.values()),
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }
