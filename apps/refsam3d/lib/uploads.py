"""Whether a path is a file a client uploaded: the one rule, used by the request check, the cache and messages."""

from __future__ import annotations

import os
import re
import tempfile

# MONAI Label stores an upload as tempfile.NamedTemporaryFile(suffix=<the client's extensions>).name
UPLOAD_NAME = re.compile(r"^tmp[A-Za-z0-9_]{6,}\.[A-Za-z0-9.]+$")


def is_upload(path: str | os.PathLike) -> bool:
    """True for ``<tempdir>/tmpXXXXXXXX.<ext>``, where MONAI Label puts the files of ``POST /infer`` uploads."""
    real = os.path.realpath(str(path))
    return os.path.dirname(real) == os.path.realpath(tempfile.gettempdir()) and bool(
        UPLOAD_NAME.match(os.path.basename(real)))
