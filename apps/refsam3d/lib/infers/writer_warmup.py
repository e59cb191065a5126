"""Load what MONAI Label's result writer needs before the first request does.

``monailabel.transform.writer.write_itk`` writes every result file through ITK, whose Python modules load lazily:
the first write of a process costs about 2 s (``itk_load_swig_module``), every later one milliseconds.  Writing
one tiny label map at start-up (in the background preload thread, after the network is built) moves that cost
out of the first request.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np

logger = logging.getLogger(__name__)


def warm_up_writer() -> float:
    """Write (and delete) a 2 x 2 x 2 uint8 NIfTI through MONAI Label's ITK writer; returns the seconds it took."""
    from monailabel.transform.writer import write_itk

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refsam3d_warmup_") as tmp:
        write_itk(np.zeros((2, 2, 2), np.uint8), os.path.join(tmp, "warmup.nii.gz"), np.eye(4), "uint8", False)
    elapsed = time.perf_counter() - start
    logger.info(f"RefSAM3D: result writer (ITK) loaded in {elapsed:.2f}s")
    return elapsed
