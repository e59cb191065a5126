"""The one allow-list for every client-given name that reaches the filesystem.

Image ids, label ids, label tags, session ids and the names derived from uploaded file names all pass
``check_name`` before the datastore or the session store turns them into a path.  The rule is an allow-list,
not a deny-list: ASCII letters, digits and ``_ - . +`` (and inner spaces), at most ``MAX_NAME_CHARS``
characters, not starting with a dot or a space; so ``..``, ``/``, ``\\``, NUL, absolute paths, drive letters,
percent-encoded forms that survived decoding and hidden files are all refused (``UnsafeNameError``, a ``BadRequest``).
"""

from __future__ import annotations

import re

from lib.errors import BadRequest

MAX_NAME_CHARS = 128
_ALLOWED = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_+\-. ]*")


class UnsafeNameError(BadRequest, ValueError):
    """A client-given name that may not become part of a path."""

    def __init__(self, kind: str, value: object, reason: str):
        shown = repr(value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "...")
        self.message = (f"invalid {kind} {shown}: {reason} (allowed: 1-{MAX_NAME_CHARS} ASCII letters, digits, "
                        "'_', '-', '+', '.' and inner spaces, not starting with '.', no '..')")
        super().__init__(self.message)


def check_name(kind: str, value: object) -> str:
    """Return ``value`` when it is a safe single path component, else raise ``UnsafeNameError``."""
    if not isinstance(value, str) or not value:
        raise UnsafeNameError(kind, value, "it is empty")
    if len(value) > MAX_NAME_CHARS:
        raise UnsafeNameError(kind, value, f"it is {len(value)} characters long")
    if "\x00" in value:
        raise UnsafeNameError(kind, value, "it contains a NUL character")
    if "/" in value or "\\" in value or ".." in value:
        raise UnsafeNameError(kind, value, "it contains a path ('/', '\\' or '..')")
    if not _ALLOWED.fullmatch(value) or value.endswith(" "):
        raise UnsafeNameError(kind, value, "it contains characters outside the allowed set")
    return value
