"""Tried for issue 20, not shipped: click-seeded region edits on the model's own probability map (persistent).

Each click also forces the connected region around it, within RADIUS voxels, whose probability is at least
(positive click) or at most (negative click) the clicked voxel's, +- DELTA; SOURCE: the map before the click
("before") or the model's answer with it ("after"); "none": the model alone. Runs scripts/evaluate.py with
lib.evaluation_clicks.interactive_case replaced."""
import os, sys
from pathlib import Path
REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "apps" / "refsam3d")); sys.path.insert(0, str(REPO / "scripts"))
import numpy as np, torch
from scipy import ndimage
import lib.evaluation_clicks as ec
from lib.training.clicks import ClickBuffer, next_click
from lib.evaluation import dice_per_label

DELTA = float(os.environ.get("DELTA", "0.0"))
RADIUS = float(os.environ.get("RADIUS", "0"))  # 0 = unbounded
SOURCE = os.environ.get("SOURCE", "before")
BIG = 12.0

def region_for(prob, pred, c, positive):
    level = prob[c]
    cand = (prob >= level - DELTA) & ~pred if positive else (prob <= level + DELTA) & pred
    if not cand[c]:
        return None
    if RADIUS > 0:
        idx = np.indices(prob.shape)
        cand &= sum((a - x) ** 2 for a, x in zip(idx, c)) <= RADIUS ** 2
    lab, _ = ndimage.label(cand)
    return lab == lab[c]

def interactive_case(model, image, gt, prompts, n_clicks, use_text=True, roi_size=(0, 0, 0), threshold=0.5,
                     device=None, oracle=None):
    device = device or next(model.parameters()).device
    k = len(prompts)
    x, off = ec._pad_to(image.float(), roi_size)
    crop = tuple(slice(o, o + n) for o, n in zip(off, image.shape[-3:]))
    buffer = ClickBuffer(k)
    clicks = [[] for _ in range(k)]
    text = list(prompts) if use_text else [None] * k
    shape = tuple(x.shape[-3:])
    forced_fg = np.zeros((k, *shape), bool); forced_bg = np.zeros((k, *shape), bool)
    new = []
    def add_clicks(pred):
        new.clear()
        for i in range(k):
            c = next_click(pred[i], gt[i])
            if c is not None:
                clicks[i].append((*c.position, c.positive))
                c = type(c)(tuple(p + o for p, o in zip(c.position, off)), c.positive, c.region_size)
                new.append((i, c))
            buffer.add(i, c)
    def apply(logits):
        lg = logits.clone()
        for i in range(k):
            fg = torch.from_numpy(forced_fg[i]); bg = torch.from_numpy(forced_bg[i])
            lg[0, i][fg] = BIG; lg[0, i][bg] = -BIG
            for j in range(k):
                if j != i:
                    lg[0, j][fg] = torch.minimum(lg[0, j][fg], torch.tensor(-BIG))
        return lg
    def edit(logits_src):
        prob = torch.sigmoid(logits_src[0].float()).cpu().numpy()
        full = ec.probs_to_masks(torch.from_numpy(prob), threshold).numpy()
        for i, c in new:
            r = region_for(prob[i], full[i], c.position, c.positive)
            if r is None:
                continue
            if c.positive:
                forced_fg[i] |= r; forced_bg[i] &= ~r
            else:
                forced_bg[i] |= r; forced_fg[i] &= ~r
    curve = []
    with torch.no_grad():
        enc = model.encode_image(x.to(device))
        if not use_text:
            add_clicks(torch.zeros_like(gt))
        points, labels = buffer.tensors(device) if not use_text else (None, None)
        logits = model.decode(enc, text, points, labels)
        if not use_text and SOURCE == "after":
            edit(logits)
        logits = apply(logits)
        for step in range(n_clicks + (1 if use_text else 0)):
            pred = ec._masks(logits, crop, threshold)
            curve.append(dice_per_label(pred, gt))
            if step == n_clicks - (0 if use_text else 1):
                break
            add_clicks(pred)
            if SOURCE == "before":
                edit(logits)
            points, labels = buffer.tensors(device)
            logits = model.decode(enc, text, points, labels, previous_mask=logits)
            if SOURCE == "after":
                edit(logits)
            logits = apply(logits)
    return {"dice": curve, "clicks": clicks, "first_click": 0 if use_text else 1}

ec.interactive_case = interactive_case
import evaluate
sys.exit(evaluate.main(sys.argv[1:]))
