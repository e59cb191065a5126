"""The DICOMweb datastore as an annotator needs it: the label set's modality listed, labelled series never served.

MONAI Label's ``DICOMWebDatastore`` lists only ``Modality=CT`` unless ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` is set,
and caches the lists of series and of labelled series for two hours (a process-wide ``TTLCache``), so a study
labelled a minute ago is still offered by Next Sample.  ``RefSAM3DDICOMWebDatastore``:

* lists the label set's modality (``MR`` for an MR label set) unless a filter is chosen (``--conf
  dicomweb_search_filter '{"Modality": "CT"}'`` or the environment variable set to another value than MONAI
  Label's default), or every image series (``SEG``, ``RTSTRUCT``, ``SR`` ... left out) when the modality is empty;
* keeps its own short cache of both lists (``LIST_TTL_S``), emptied whenever this server saves a label;
* counts a series as labelled when Orthanc holds a DICOM-SEG for it *or* the local cache holds its final label.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore

logger = logging.getLogger(__name__)

SEARCH_FILTER_ENV = "MONAI_LABEL_DICOMWEB_SEARCH_FILTER"
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC", "OT_SEG"})
LIST_TTL_S = 30.0  # labels written to the PACS by other tools appear in Next Sample within this time
MODALITY_TAG = "00080060"


def default_search_filter(modality: Optional[str], chosen: Optional[str] = None) -> Dict[str, Any]:
    """The QIDO-RS filter for series: ``chosen`` (``--conf dicomweb_search_filter``), else the environment variable
    when it differs from MONAI Label's default (``monailabel start_server`` exports every setting, the default
    ``{"Modality": "CT"}`` too, so that value means "not chosen"), else the label set's modality (or none)."""
    raw = (chosen or "").strip()
    if not raw:
        from monailabel.config import Settings

        env = os.environ.get(SEARCH_FILTER_ENV, "").strip()
        default = Settings.model_fields[SEARCH_FILTER_ENV].default
        raw = env if env and json.loads(env) != default else ""
    if raw:
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError(f"a DICOMweb search filter must be a JSON object, got {raw!r}")
        return value
    return {"Modality": str(modality).upper()} if modality else {}


def series_modality(dataset: Dict[str, Any]) -> str:
    value = (dataset.get(MODALITY_TAG) or {}).get("Value") or [""]
    return str(value[0]).upper()


class RefSAM3DDICOMWebDatastore(DICOMWebDatastore):
    """``DICOMWebDatastore`` with a modality filter from the label set and label-aware, invalidated caches."""

    _cache_lock = threading.Lock()

    @classmethod
    def adopt(cls, datastore: DICOMWebDatastore, modality: Optional[str],
              chosen_filter: Optional[str] = None) -> "RefSAM3DDICOMWebDatastore":
        """Turn the datastore MONAI Label built (client, cache folder, options) into this class, in place."""
        datastore.__class__ = cls
        datastore._search_filter = default_search_filter(modality, chosen_filter)
        datastore._lists = {}
        logger.info(f"RefSAM3D: DICOMweb series filter {datastore._search_filter or 'none (all image series)'}")
        return datastore

    @property
    def search_filter(self) -> Dict[str, Any]:
        return dict(self._search_filter)

    def _cached(self, key: str, compute: Callable[[], List[str]]) -> List[str]:
        with self._cache_lock:
            hit = self._lists.get(key)
            if hit is not None and time.monotonic() - hit[0] < LIST_TTL_S:
                return list(hit[1])
        value = compute()
        with self._cache_lock:
            self._lists[key] = (time.monotonic(), value)
        return list(value)

    def invalidate(self) -> None:
        """Forget the lists of series and of labelled series (called after every saved label)."""
        with self._cache_lock:
            self._lists.clear()

    def list_images(self) -> List[str]:
        def compute() -> List[str]:
            found = self._client.search_for_series(search_filters=self._search_filter)
            return [ds["0020000E"]["Value"][0] for ds in found if series_modality(ds) not in NON_IMAGE_MODALITIES]

        return self._cached("images", compute)

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        remote = self._cached("labelled", lambda: DICOMWebDatastore.get_labeled_images.__wrapped__(self))
        local = LocalDatastore.get_labeled_images(self)  # final labels saved through this server (cache folder)
        images = set(self.list_images())
        return sorted(set(remote) | (set(local) & images))

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        labelled = set(self.get_labeled_images())
        return [s for s in self.list_images() if s not in labelled]

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any],
                   label_id: str = "") -> str:
        try:
            return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
        finally:
            self.invalidate()
