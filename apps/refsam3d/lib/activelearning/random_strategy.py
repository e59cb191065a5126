"""MONAI Label's ``random`` strategy without its 500 when every unlabeled study was served this second.

MONAI Label 0.8.5 weights each unlabeled study by the seconds since it was last served, so when all of
them were served within the current second (one study, or several clients asking at once) every weight is
0 and ``random.choices`` raises "Total of weights must be greater than zero" -> 500.  Here such a study
gets weight 1: it stays the least likely, and the request is answered.
"""

from __future__ import annotations

import logging
import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.random import Random as MonaiRandom

logger = logging.getLogger(__name__)


class Random(MonaiRandom):
    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not len(images):
            return None
        strategy, now = request["strategy"], int(time.time())
        served = [datastore.get_image_info(i).get("strategy", {}).get(strategy, {}).get("ts", 0) for i in images]
        weights = [max(1, now - ts) for ts in served]
        image = random.choices(images, weights=weights)[0]
        logger.info(f"Random: Selected Image: {image}; Weight: {weights[images.index(image)]}")
        return {"id": image, "weight": weights[images.index(image)]}
