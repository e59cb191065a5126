"""Which role each MONAI Label endpoint requires in this app (used when ``MONAI_LABEL_AUTH_ENABLE`` is true).

MONAI Label 0.8.5 wires ``RBAC(role)`` into each endpoint; the app keeps those roles except where they leave a gap:

* annotating (``POST /infer``, ``POST /activelearning`` = next sample, the ``/session`` uploads used by inference)
  needs ``monailabel-annotator``, as saving a label does (MONAI Label lets any ``monailabel-user`` run them);
* uploading or deleting model weights (``PUT``/``DELETE /model/{model}``) needs ``monailabel-admin`` (MONAI Label's
  own summary says admin, its code checks annotator);
* ``POST /reload`` (re-creates the app; no check at all in MONAI Label) needs ``monailabel-admin``.

Everything else keeps MONAI Label's role: reading (``/info``, ``GET /datastore``, OHIF, DICOMweb proxy) user;
saving labels and images annotator; training, batch inference, deleting images/labels, model download admin.
Role names are MONAI Label's settings (``MONAI_LABEL_AUTH_ROLE_*``), so a realm can rename them.
"""

from __future__ import annotations

import re
from typing import Optional


def _settings():
    from monailabel.config import settings

    return settings


# (method, path regex) -> settings attribute of the required role; first match wins
POLICY = (
    ("POST", r"/infer/[^/]+", "MONAI_LABEL_AUTH_ROLE_ANNOTATOR"),
    ("POST", r"/activelearning/[^/]+", "MONAI_LABEL_AUTH_ROLE_ANNOTATOR"),
    ("*", r"/session/.*", "MONAI_LABEL_AUTH_ROLE_ANNOTATOR"),
    ("PUT", r"/model/[^/]+", "MONAI_LABEL_AUTH_ROLE_ADMIN"),
    ("DELETE", r"/model/[^/]+", "MONAI_LABEL_AUTH_ROLE_ADMIN"),
    ("POST", r"/reload", "MONAI_LABEL_AUTH_ROLE_ADMIN"),
)


def app_role(method: str, path: str) -> Optional[str]:
    """The role the app requires for ``method path`` where it differs from MONAI Label's wiring, else None."""
    for m, pattern, attr in POLICY:
        if (m == "*" or m == method.upper()) and re.fullmatch(pattern, path):
            return getattr(_settings(), attr)
    return None
