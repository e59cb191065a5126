"""The infer tasks the app declares, one per viewer tool, all over one network, one weights store and one cache.

The viewers pick models by ``type`` (read from their code, docs/app.md "Clicks"):

==========================  =====================  ==========================================================
task                        type                   shown by
==========================  =====================  ==========================================================
``refsam3d``                ``segmentation``       OHIF Auto-segmentation + Class Prompts; Slicer auto-segmentation
``refsam3d_clicks``         ``vista3d``            OHIF Point Prompts (``points`` / ``point_labels`` /
                                                   ``label_prompt``), also Auto-segmentation + Class Prompts
``refsam3d_deepgrow``       ``deepgrow``           Slicer's interactive section (``foreground`` / ``background``
                                                   / ``label``); also OHIF Point Prompts (no label: clicks only)
==========================  =====================  ==========================================================

No single type serves both viewers' click tools: Slicer ignores ``vista3d`` models, and OHIF sends no label
for ``deepgrow`` ones.  Every task answers every request format (text, labels, clicks) the same way.
OHIF's Point Prompts always offers a ``background`` row of its own: the clicks placed there are the negative ones.
"""

from __future__ import annotations

from typing import Any, Dict

from lib.request_settings import InferOptions
from monailabel.interfaces.tasks.infer_v2 import InferType

TEXT_CONFIG = {"text_prompt": "", "threshold": InferOptions().threshold}
CLICK_CONFIG = {**TEXT_CONFIG, "clicks_only": False}

CLICK_HELP = (" Clicks: OHIF Point Prompts (select a segment, click foreground points, 'background' for negative "
              "ones) or Slicer's Deepgrow points; only the decoder reruns, on the windows the clicks touch.")


def click_task_options(name: str = "refsam3d") -> Dict[str, Dict[str, Any]]:
    """``{task name: RefSAM3DInfer keyword arguments}`` for the three tasks."""
    return {
        name: {"infer_type": InferType.SEGMENTATION, "config": dict(TEXT_CONFIG)},
        f"{name}_clicks": {"infer_type": "vista3d", "config": dict(CLICK_CONFIG), "description_suffix": CLICK_HELP},
        f"{name}_deepgrow": {"infer_type": InferType.DEEPGROW, "config": dict(CLICK_CONFIG),
                             "description_suffix": CLICK_HELP},
    }
