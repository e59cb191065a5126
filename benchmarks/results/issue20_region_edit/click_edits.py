"""Tried for issue 20, not shipped: two rules around the model's click answers, run through scripts/evaluate.py
with lib.evaluation_clicks.interactive_case replaced by the same protocol plus the rule (EDIT):

* ``region``: each click also forces the connected region around it, within RADIUS voxels (0 = unbounded), whose
  probability is at least (positive click) or at most (negative click) the clicked voxel's, +- DELTA; taken from
  the map before the click (SOURCE=before) or the model's answer with it (SOURCE=after); the forced voxels persist.
* ``intensity``: as ``region``, but the connected region is the voxels whose image intensity is within DELTA of the
  clicked voxel's (the normalised image's units) and that the answer before the click has on the wrong side.
* ``gate``: a click changes the answer only within GATE voxels of the clicks (GMODE all: every click so far; new:
  this round's); elsewhere the previous answer stays.
* ``none``: the model alone.
"""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "apps" / "refsam3d"))
sys.path.insert(0, str(REPO / "scripts"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

import lib.evaluation_clicks as ec  # noqa: E402
from lib.evaluation import dice_per_label  # noqa: E402
from lib.training.clicks import ClickBuffer, next_click  # noqa: E402

EDIT = os.environ.get("EDIT", "none")
DELTA, RADIUS = float(os.environ.get("DELTA", "0")), float(os.environ.get("RADIUS", "0"))
SOURCE = os.environ.get("SOURCE", "before")
GATE, GMODE = float(os.environ.get("GATE", "0")), os.environ.get("GMODE", "all")
BIG = 12.0


def ball(shape, centres, radius):
    """Voxels within ``radius`` of any of ``centres``."""
    idx = np.indices(shape).astype(np.float32)
    out = np.zeros(shape, bool)
    for c in centres:
        out |= sum((a - x) ** 2 for a, x in zip(idx, c)) <= radius ** 2
    return out


class RegionEdit:
    """The ``region`` rule: forced foreground / background per label, kept for the later clicks."""

    def __init__(self, k, shape, threshold, image=None):
        self.fg, self.bg, self.threshold = np.zeros((k, *shape), bool), np.zeros((k, *shape), bool), threshold
        self.image = image  # [D, H, W] numpy: the intensity rule; None: the probability rule

    def record(self, logits, new):
        prob = torch.sigmoid(logits[0].float()).cpu().numpy()
        masks = ec.probs_to_masks(torch.from_numpy(prob), self.threshold).numpy()
        for i, c in new:
            p, c0 = prob[i], c.position
            if self.image is not None:
                cand = (np.abs(self.image - self.image[c0]) <= DELTA) & (~masks[i] if c.positive else masks[i])
            else:
                cand = (p >= p[c0] - DELTA) & ~masks[i] if c.positive else (p <= p[c0] + DELTA) & masks[i]
            if not cand[c0]:
                continue
            if RADIUS > 0:
                cand &= ball(p.shape, [c0], RADIUS)
            lab, _ = ndimage.label(cand)
            r = lab == lab[c0]
            (self.fg if c.positive else self.bg)[i] |= r
            (self.bg if c.positive else self.fg)[i] &= ~r

    def apply(self, logits):
        lg = logits.clone()
        for i in range(lg.shape[1]):
            fg, bg = torch.from_numpy(self.fg[i]), torch.from_numpy(self.bg[i])
            lg[0, i][fg], lg[0, i][bg] = BIG, -BIG
            for j in range(lg.shape[1]):
                if j != i:
                    lg[0, j][fg] = torch.clamp(lg[0, j][fg], max=-BIG)
        return lg


def interactive_case(model, image, gt, prompts, n_clicks, use_text=True, roi_size=(0, 0, 0), threshold=0.5,
                     device=None, oracle=None):
    """lib.evaluation_clicks.interactive_case with the EDIT rule around each answer."""
    device = device or next(model.parameters()).device
    k = len(prompts)
    x, off = ec._pad_to(image.float(), roi_size)
    crop = tuple(slice(o, o + n) for o, n in zip(off, image.shape[-3:]))
    shape = tuple(x.shape[-3:])
    buffer, clicks, placed, new = ClickBuffer(k), [[] for _ in range(k)], [[] for _ in range(k)], []
    text = list(prompts) if use_text else [None] * k
    region = None
    if EDIT in ("region", "intensity"):
        region = RegionEdit(k, shape, threshold, x[0, 0].cpu().numpy() if EDIT == "intensity" else None)

    def add_clicks(pred):
        new.clear()
        for i in range(k):
            c = next_click(pred[i], gt[i])
            if c is not None:
                clicks[i].append((*c.position, c.positive))
                c = type(c)(tuple(p + o for p, o in zip(c.position, off)), c.positive, c.region_size)
                placed[i].append(c.position)
                new.append((i, c))
            buffer.add(i, c)

    def after_decode(before, logits):
        if region is not None:
            if SOURCE == "after":
                region.record(logits, new)
            return region.apply(logits)
        if EDIT == "gate" and before is not None:
            for i in range(k):
                centres = placed[i] if GMODE == "all" else [c.position for j, c in new if j == i]
                keep = torch.from_numpy(~ball(shape, centres, GATE))
                logits[0, i] = torch.where(keep, before[0, i], logits[0, i])
        return logits

    curve = []
    with torch.no_grad():
        enc = model.encode_image(x.to(device))
        if not use_text:
            add_clicks(torch.zeros_like(gt))
        points, labels = buffer.tensors(device) if not use_text else (None, None)
        logits = after_decode(None, model.decode(enc, text, points, labels))
        for step in range(n_clicks + (1 if use_text else 0)):
            pred = ec._masks(logits, crop, threshold)
            curve.append(dice_per_label(pred, gt))
            if step == n_clicks - (0 if use_text else 1):
                break
            add_clicks(pred)
            if region is not None and SOURCE == "before":
                region.record(logits, new)
            points, labels = buffer.tensors(device)
            logits = after_decode(logits, model.decode(enc, text, points, labels, previous_mask=logits))
    return {"dice": curve, "clicks": clicks, "first_click": 0 if use_text else 1}


if __name__ == "__main__":
    ec.interactive_case = interactive_case
    import evaluate

    sys.exit(evaluate.main(sys.argv[1:]))
