"""Tried for issue 20, not shipped: a click changes the answer only within GATE voxels of the clicks (GMODE all: every
click so far; new: this round's), elsewhere the previous answer stays. Runs scripts/evaluate.py with
lib.evaluation_clicks.interactive_case replaced."""
import os, sys
from pathlib import Path
REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "apps" / "refsam3d")); sys.path.insert(0, str(REPO / "scripts"))
import numpy as np, torch
import lib.evaluation_clicks as ec
from lib.training.clicks import ClickBuffer, next_click
from lib.evaluation import dice_per_label

GATE = float(os.environ.get("GATE", "0"))
MODE = os.environ.get("GMODE", "all")  # all clicks so far, or the new ones

def gate_map(shape, centres):
    idx = np.indices(shape).astype(np.float32)
    g = np.zeros(shape, bool)
    for c in centres:
        g |= sum((a - x) ** 2 for a, x in zip(idx, c)) <= GATE ** 2
    return torch.from_numpy(g)

def interactive_case(model, image, gt, prompts, n_clicks, use_text=True, roi_size=(0, 0, 0), threshold=0.5,
                     device=None, oracle=None):
    device = device or next(model.parameters()).device
    k = len(prompts)
    x, off = ec._pad_to(image.float(), roi_size)
    crop = tuple(slice(o, o + n) for o, n in zip(off, image.shape[-3:]))
    buffer = ClickBuffer(k)
    clicks = [[] for _ in range(k)]
    pclicks = [[] for _ in range(k)]
    newc = [[] for _ in range(k)]
    text = list(prompts) if use_text else [None] * k
    shape = tuple(x.shape[-3:])
    def add_clicks(pred):
        for i in range(k):
            newc[i] = []
            c = next_click(pred[i], gt[i])
            if c is not None:
                clicks[i].append((*c.position, c.positive))
                c = type(c)(tuple(p + o for p, o in zip(c.position, off)), c.positive, c.region_size)
                pclicks[i].append(c.position); newc[i] = [c.position]
            buffer.add(i, c)
    curve = []
    with torch.no_grad():
        enc = model.encode_image(x.to(device))
        if not use_text:
            add_clicks(torch.zeros_like(gt))
        points, labels = buffer.tensors(device) if not use_text else (None, None)
        logits = model.decode(enc, text, points, labels)
        for step in range(n_clicks + (1 if use_text else 0)):
            pred = ec._masks(logits, crop, threshold)
            curve.append(dice_per_label(pred, gt))
            if step == n_clicks - (0 if use_text else 1):
                break
            add_clicks(pred)
            points, labels = buffer.tensors(device)
            new = model.decode(enc, text, points, labels, previous_mask=logits)
            if GATE > 0:
                for i in range(k):
                    cs = pclicks[i] if MODE == "all" else newc[i]
                    g = gate_map(shape, cs) if cs else torch.zeros(shape, dtype=torch.bool)
                    new[0, i] = torch.where(g, new[0, i], logits[0, i])
            logits = new
    return {"dice": curve, "clicks": clicks, "first_click": 0 if use_text else 1}

ec.interactive_case = interactive_case
import evaluate
sys.exit(evaluate.main(sys.argv[1:]))
