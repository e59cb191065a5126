"""MONAI Label's ``Random`` strategy without its crash: it weights each unlabelled study by the seconds since it was
last served, so when every one was served within the current second (two quick Next Sample clicks with one
study left) the weights are all 0 and ``random.choices`` raises (a 500).  Here every study weighs at least 1."""

from __future__ import annotations

import logging
import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.random import Random

logger = logging.getLogger(__name__)


class SafeRandom(Random):
    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        strategy = request["strategy"]
        now = int(time.time())
        weights = [max(1, now - datastore.get_image_info(i).get("strategy", {}).get(strategy, {}).get("ts", 0))
                   for i in images]
        image = random.choices(images, weights=weights)[0]
        logger.info(f"Random: selected {image} of {len(images)} unlabelled studies")
        return {"id": image, "weight": weights[images.index(image)]}
