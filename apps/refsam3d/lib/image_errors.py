"""Why an image cannot be segmented: plain Python errors of the pre-processing (shared with training).

No HTTP here: the app layer maps them to status codes in ``lib/errors.py``.
"""

from __future__ import annotations


class ImageNotFoundError(FileNotFoundError):
    """The image file or folder does not exist."""


class UnreadableImageError(ValueError):
    """The file is empty, truncated, corrupt or not a NIfTI, NRRD or DICOM volume."""


class UnusableImageError(ValueError):
    """The volume was read but cannot be segmented: not 3D, several channels, no voxels, NaN or infinite voxels."""
