"""MONAI Label's datastore, closed to path traversal and crash-safe.

``harden_datastore`` turns the datastore MONAI Label built (local folder or DICOMweb cache) into one whose

* every client-given image id, label id and label tag passes ``check_name`` (the app's one allow-list) before it
  becomes part of a path; ids and tags the datastore already holds came from its own folder and are accepted;
* images and labels saved through PUT, and ``datastore_v2.json``, are written atomically (``lib/atomic_files.py``);
* DELETE updates the index before it answers (MONAI Label left that to its file watcher, asynchronously).

It swaps the instance's class for a subclass (``NameCheckedDatastore`` + the original class + ``AtomicLocalDatastore``)
so that ``isinstance`` checks of MONAI Label and of the app (``LocalDatastore``, ``DICOMWebDatastore``) still hold.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, Optional

from lib.atomic_files import atomic_copy, atomic_write_text
from lib.server.names import check_name
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.exception import ImageNotFoundException
from monailabel.utils.others.generic import remove_file

logger = logging.getLogger(__name__)


class AtomicLocalDatastore(LocalDatastore):
    """``LocalDatastore`` whose image, label and index writes are temporary file + rename (same logic otherwise)."""

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        from filelock import FileLock

        id, image_ext = self._to_id(os.path.basename(image_filename))
        image_id = image_id or id
        name = self._filename(image_id, image_ext)
        dest = os.path.realpath(os.path.join(self._datastore.image_path(), name))
        logger.info(f"Adding Image: {image_id} => {dest}")
        with FileLock(self._lock_file):
            atomic_copy(image_filename, dest)
            info = dict(image_info or {}, ts=int(time.time()), name=name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=image_ext))
            self._update_datastore_file(lock=False)
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        from filelock import FileLock

        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"Image {image_id} not found")
        _, label_ext = self._to_id(os.path.basename(label_filename))
        label_path = self._datastore.label_path(label_tag)
        name = self._filename(image_id, label_ext)
        logger.info(f"Saving Label: {image_id} => {label_tag} => {name}")
        with FileLock(self._lock_file):
            atomic_copy(label_filename, os.path.join(label_path, name))
            info = dict(label_info or {}, ts=int(time.time()), name=name)
            obj.labels[label_tag] = DataModel(info=info, ext=label_ext)
            self._update_datastore_file(lock=False)
        return image_id

    def remove_image(self, image_id: str) -> None:
        """Delete the image and its labels and drop them from the index before answering (MONAI Label leaves the
        index to its file watcher, so a listing right after a 200 DELETE still showed the image)."""
        from filelock import FileLock

        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"Image {image_id} not found")
        logger.info(f"Removing Image: {image_id}")
        with FileLock(self._lock_file):
            for tag, label in list(obj.labels.items()):  # a copy: the file watcher may drop a label meanwhile
                remove_file(os.path.join(self._datastore.label_path(tag), self._filename(image_id, label.ext)))
            image_name = self._filename(image_id, obj.image.ext)
            remove_file(os.path.realpath(os.path.join(self._datastore.image_path(), image_name)))
            self._datastore.objects.pop(image_id, None)
            self._update_datastore_file(lock=False)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Delete one label file and drop it from the index before answering (see ``remove_image``)."""
        from filelock import FileLock

        logger.info(f"Removing label: {label_id} => {label_tag}")
        with FileLock(self._lock_file):
            remove_file(self.get_label_uri(label_id, label_tag))
            obj = self._datastore.objects.get(label_id)
            if obj is not None and obj.labels.pop(label_tag, None) is not None:
                self._update_datastore_file(lock=False)

    def _update_datastore_file(self, lock=True):
        from filelock import FileLock

        def write() -> None:  # no "ignore the next event" flag: a rename is seen as a move (_on_index_replaced)
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    def _on_index_replaced(self, event) -> None:
        """The file watcher saw a rename: when it put a new ``datastore_v2.json`` in place (an atomic write of this
        process or of another, e.g. a scoring or training subprocess), reload it if its time stamp changed."""
        if os.path.realpath(getattr(event, "dest_path", "") or "") == os.path.realpath(self._datastore_config_path):
            self._init_from_datastore_file()
        # images and labels renamed into place are this server's own saves, already in its index: nothing to do


class NameCheckedDatastore:
    """Mixin: every id and tag a client gives goes through ``check_name`` unless the datastore already holds it."""

    def _image_id(self, image_id: str) -> str:
        return image_id if image_id in self._datastore.objects else check_name("image id", image_id)

    def _tag(self, tag: Optional[str]) -> Optional[str]:
        if not tag or tag in self._datastore.tags():
            return tag
        return check_name("label tag", tag)

    def get_image(self, image_id: str, params=None) -> Any:
        return super().get_image(self._image_id(image_id), params)

    def get_image_uri(self, image_id: str) -> str:
        return super().get_image_uri(self._image_id(image_id))

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        return super().get_image_info(self._image_id(image_id))

    def get_label(self, label_id: str, label_tag: str, params=None) -> Any:
        return super().get_label(self._image_id(label_id), self._tag(label_tag), params)

    def get_label_uri(self, label_id: str, label_tag: str, *args, **kwargs) -> str:
        return super().get_label_uri(self._image_id(label_id), self._tag(label_tag), *args, **kwargs)

    def get_labels_by_image_id(self, image_id: str) -> Dict[str, str]:
        return super().get_labels_by_image_id(self._image_id(image_id))

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return super().get_label_by_image_id(self._image_id(image_id), self._tag(tag))

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        return super().get_label_info(self._image_id(label_id), self._tag(label_tag))

    def get_labeled_images(self, label_tag: Optional[str] = None, labels=None):
        return super().get_labeled_images(self._tag(label_tag), labels)

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels=None):
        return super().get_unlabeled_images(self._tag(label_tag), labels)

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        derived, ext = self._to_id(os.path.basename(image_filename))
        check_name("image id", image_id or derived)
        check_name("file extension", ext.lstrip("."))
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id: str) -> None:
        return super().remove_image(self._image_id(image_id))

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        check_name("file extension", self._to_id(os.path.basename(label_filename))[1].lstrip("."))
        return super().save_label(self._image_id(image_id), label_filename, self._tag(label_tag), label_info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        return super().remove_label(self._image_id(label_id), self._tag(label_tag))

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        return super().update_image_info(self._image_id(image_id), info)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        return super().update_label_info(self._image_id(label_id), self._tag(label_tag), info)


_CLASSES: Dict[type, type] = {}


def harden_datastore(datastore):
    """Give ``datastore`` the name checks (any datastore) and atomic writes (``LocalDatastore`` and subclasses)."""
    cls = type(datastore)
    if cls not in _CLASSES:
        if cls is LocalDatastore:
            bases: tuple = (NameCheckedDatastore, AtomicLocalDatastore)
        elif issubclass(cls, LocalDatastore):
            bases = (NameCheckedDatastore, cls, AtomicLocalDatastore)
        else:
            bases = (NameCheckedDatastore, cls)
        _CLASSES[cls] = type(f"Hardened{cls.__name__}", bases, {"__doc__": cls.__doc__, "__module__": __name__})
    datastore.__class__ = _CLASSES[cls]
    handler = getattr(datastore, "_handler", None)  # MONAI Label's file watcher reacts to created/modified only
    if handler is not None and isinstance(datastore, AtomicLocalDatastore):
        handler.on_moved = datastore._on_index_replaced
    return datastore
