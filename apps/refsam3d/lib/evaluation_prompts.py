"""Does the text mean what it says? Dice per phrasing and empty answers for absent structures.

``scripts/evaluate.py --prompts FILE`` reads a JSON file::

    {"labels": {"anterior hippocampus": ["hippocampus head", ...], ...},   # paraphrases per label
     "absent": ["liver", "amygdala", ...]}                                  # structures not in the images

and asks the model, for every case, with each text on its own (the way the server answers one free-text
prompt: every prompt thresholded alone). Reported: Dice of each paraphrase and of each label's exact name
against that label; the exact-prompt Dice as the label set's automatic segmentation computes it (the
canonical prompts competing per voxel); for absent structures the share of (case, prompt) pairs answered
with an empty mask and the mean predicted volume. Dice is MONAI's (``lib.evaluation.case_metrics``).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lib.evaluation import _json_safe, case_metrics, probs_to_masks
from lib.vocabulary import absent_vocabulary, normalise

TARGETS = {"paraphrase_mean_dice": 0.85, "paraphrase_min_dice": 0.7, "absent_empty_share": 0.95}


@dataclass
class PromptFile:
    labels: dict[str, list[str]]  # label name (as in the label set) -> paraphrases
    absent: list[str]
    path: str = ""


def load_prompt_file(path: str | os.PathLike, label_set) -> PromptFile:
    """Read and check a prompt file against ``label_set``; ValueError with a readable message."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"prompt file {path} could not be read as JSON: {exc}") from exc
    labels, absent = data.get("labels", {}), data.get("absent", [])
    if not isinstance(labels, dict) or not isinstance(absent, list):
        raise ValueError(f"prompt file {path}: expected {{'labels': {{label: [phrasings]}}, 'absent': [names]}}")
    known = {n.lower(): n for n in label_set.labels}
    out: dict[str, list[str]] = {}
    for name, phrasings in labels.items():
        if str(name).lower() not in known:
            raise ValueError(f"prompt file {path}: label {name!r} is not in label set '{label_set.name}' "
                             f"(labels: {', '.join(label_set.labels)})")
        if not isinstance(phrasings, list) or not all(isinstance(p, str) and p.strip() for p in phrasings):
            raise ValueError(f"prompt file {path}: the phrasings of {name!r} must be a list of non-empty strings")
        out[known[str(name).lower()]] = [p.strip() for p in phrasings]
    if not all(isinstance(a, str) and a.strip() for a in absent):
        raise ValueError(f"prompt file {path}: 'absent' must be a list of non-empty strings")
    return PromptFile(out, [a.strip() for a in absent], str(path))


def seen_in_training(phrase: str, trained: dict[str, list[str]], templates: Sequence[str]) -> bool:
    """Whether training could have drawn ``phrase``: a trained phrasing, alone or in one of the templates."""
    from lib.training.prompts import apply_template

    forms = {normalise(apply_template(t, p)) for ps in trained.values() for p in ps for t in (*templates, "{}")}
    return normalise(phrase) in forms


def _plan(names: Sequence[str], prompt_file: PromptFile) -> list[dict]:
    """One row per text asked: kind (name | paraphrase | absent), label (None for absent), text."""
    rows = [{"kind": "name", "label": n, "text": n} for n in names]
    rows += [{"kind": "paraphrase", "label": n, "text": p} for n, ps in prompt_file.labels.items() for p in ps
             if n in names]
    return rows + [{"kind": "absent", "label": None, "text": a} for a in prompt_file.absent]


def evaluate_prompts(segmenter, datalist: Sequence[dict], label_set, prompt_file: PromptFile,
                     checkpoint_meta: dict | None = None, progress: bool = False, info: dict | None = None,
                     flagged: Callable[[str], bool] | None = None) -> dict:
    """Run every text of ``prompt_file`` on every case (one inference per case, all prompts together).

    ``flagged(text)``: whether the server would warn about ``text`` (e.g. its prompt similarity below the
    server's minimum); absent structures then also count as answered when flagged ("empty or flagged").
    """
    from lib.labelsets import trained_phrasings
    from lib.training.data import val_transforms
    from lib.training.prompts import label_map_to_binary

    entries = list(segmenter.entries)
    names = [e.name for e in entries]
    rows = _plan(names, prompt_file)
    texts = [e.prompt for e in entries] + [r["text"] for r in rows]
    spacing = [float(s) for s in label_set.target_spacing]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    ct_window = label_set.ct_window if label_set.modality == "CT" else None
    xform = val_transforms(label_set.modality, spacing, with_label=True, ct_window=ct_window)
    cases = []
    iterator: Any = datalist
    if progress:
        from tqdm import tqdm

        iterator = tqdm(datalist, desc="prompts", unit="case")
    t0 = time.time()
    for item in iterator:
        data = xform({"image": item["image"], "label": item["label"]})
        image = torch.as_tensor(data["image"]).float()[None]
        gt = label_map_to_binary(torch.as_tensor(data["label"]), entries)  # [L, D, H, W]
        with torch.no_grad():
            probs = segmenter.predict_probs(image, texts).to("cpu")
        canonical = probs_to_masks(probs[: len(entries)], segmenter.threshold, exclusive=True)
        alone = probs[len(entries):] >= segmenter.threshold
        cases.append(_score_case(item, rows, names, gt, canonical, alone, voxel_ml))
    trained = trained_phrasings(checkpoint_meta, label_set)
    templates = list((checkpoint_meta or {}).get("prompt_templates") or [])
    flags = {r["text"]: bool(flagged(r["text"])) for r in rows} if flagged else {}
    for case in cases:
        for answer in case["answers"]:
            answer["flagged"] = flags.get(answer["text"])
    result = {"info": dict(info or {}), "prompt_file": prompt_file.path, "labels": names,
              "num_cases": len(cases), "seconds": round(time.time() - t0, 2), "threshold": segmenter.threshold,
              **summarise_prompts(cases, rows, names, label_set, trained, templates), "cases": cases}
    return _json_safe(result)


def _score_case(item: dict, rows: list[dict], names: list[str], gt: torch.Tensor, canonical: torch.Tensor,
                alone: torch.Tensor, voxel_ml: float) -> dict:
    exact = case_metrics(canonical, gt, metrics=("dice",))["dice"]
    labelled = [i for i, r in enumerate(rows) if r["label"] is not None]
    gt_of = torch.stack([gt[names.index(rows[i]["label"])] for i in labelled]) if labelled else None
    picked = alone[torch.as_tensor(labelled, dtype=torch.long)]
    dice = case_metrics(picked, gt_of, metrics=("dice",))["dice"] if labelled else []
    volumes = alone.flatten(1).sum(1).tolist()
    answers = []
    for i, r in enumerate(rows):
        answers.append({"kind": r["kind"], "label": r["label"], "text": r["text"],
                        "dice": dice[labelled.index(i)] if i in labelled else None,
                        "predicted_ml": round(volumes[i] * voxel_ml, 4), "empty": volumes[i] == 0})
    return {"id": item.get("id") or Path(item["image"]).name, "exact_prompt_dice": dict(zip(names, exact)),
            "ground_truth_ml": round(float(gt.sum()) * voxel_ml, 4), "answers": answers}


def summarise_prompts(cases: list[dict], rows: list[dict], names: list[str], label_set,
                      trained: dict[str, list[str]], templates: Sequence[str]) -> dict:
    """Means per phrasing and label, absent-structure empty shares, and the targets of issue 25."""
    def answers(text: str, kind: str) -> list[dict]:
        return [a for c in cases for a in c["answers"] if a["text"] == text and a["kind"] == kind]

    exact = {n: float(np.mean([c["exact_prompt_dice"][n] for c in cases])) for n in names} if cases else {}
    phrasings = []
    for r in rows:
        if r["kind"] == "absent":
            continue
        dice = [a["dice"] for a in answers(r["text"], r["kind"])]
        phrasings.append({"kind": r["kind"], "label": r["label"], "text": r["text"],
                          "dice_mean": float(np.mean(dice)) if dice else None,
                          "dice_min": float(np.min(dice)) if dice else None,
                          "empty_share": float(np.mean([a["empty"] for a in answers(r["text"], r["kind"])]))
                          if dice else None,
                          "seen_in_training": seen_in_training(r["text"], trained, templates)})
    para = [p for p in phrasings if p["kind"] == "paraphrase" and p["dice_mean"] is not None]
    vocab = set(absent_vocabulary(label_set))
    absent = []
    for r in rows:
        if r["kind"] == "absent":
            got = answers(r["text"], "absent")
            absent.append({"text": r["text"], "in_training_vocabulary": normalise(r["text"]) in vocab,
                           "empty_share": float(np.mean([a["empty"] for a in got])) if got else None,
                           "predicted_ml_mean": float(np.mean([a["predicted_ml"] for a in got])) if got else None})
    gt_ml = float(np.mean([c["ground_truth_ml"] for c in cases])) if cases else None
    para_mean = float(np.mean([p["dice_mean"] for p in para])) if para else None
    para_min = float(min(p["dice_mean"] for p in para)) if para else None
    empty_all = _share(cases, None)
    answered = [a["empty"] or bool(a.get("flagged")) for c in cases for a in c["answers"] if a["kind"] == "absent"]
    answered_share = float(np.mean(answered)) if answered else None
    return {
        "exact_prompt_dice": {**exact, "mean": float(np.mean(list(exact.values()))) if exact else None},
        "exact_name_dice": {p["label"]: p["dice_mean"] for p in phrasings if p["kind"] == "name"},
        "paraphrases": {"mean_dice": para_mean, "min_phrasing_dice": para_min,
                        "per_label": {n: _mean([p["dice_mean"] for p in para if p["label"] == n]) for n in names},
                        "below_0.7": [p["text"] for p in para if p["dice_mean"] < 0.7],
                        "seen_in_training": [p["text"] for p in para if p["seen_in_training"]]},
        "phrasings": phrasings,
        "absent": {"empty_share": empty_all, "empty_or_flagged_share": answered_share,
                   "empty_share_in_vocabulary": _share(cases, vocab, True),
                   "empty_share_not_in_vocabulary": _share(cases, vocab, False),
                   "predicted_ml_mean": _mean([a["predicted_ml_mean"] for a in absent]),
                   "ground_truth_ml_mean": gt_ml, "per_prompt": absent},
        "targets": {"paraphrase_mean_dice>=0.85": _at_least(para_mean, TARGETS["paraphrase_mean_dice"]),
                    "every_paraphrase_dice>=0.7": _at_least(para_min, TARGETS["paraphrase_min_dice"]),
                    "absent_empty_or_flagged_share>=0.95": _at_least(answered_share, TARGETS["absent_empty_share"])},
    }


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _at_least(value: float | None, bar: float) -> bool | None:
    return None if value is None else bool(value >= bar)


def _share(cases: list[dict], vocab: set | None, inside: bool = True) -> float | None:
    """Share of (case, absent prompt) pairs answered empty; ``vocab``: only prompts in (or not in) it."""
    got = [a["empty"] for c in cases for a in c["answers"] if a["kind"] == "absent"
           and (vocab is None or (normalise(a["text"]) in vocab) == inside)]
    return float(np.mean(got)) if got else None


def write_prompt_reports(result: dict, out_dir: str | os.PathLike, stem: str = "prompts",
                         title: str | None = None) -> dict:
    """``<stem>.json``, ``<stem>.csv`` (one row per case and text) and ``<stem>.png``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(result, indent=1))
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "kind", "label", "text", "dice", "predicted_ml", "empty", "flagged"])
        for c in result["cases"]:
            for n, d in c["exact_prompt_dice"].items():
                w.writerow([c["id"], "exact_prompt", n, n, f"{d:.4f}", "", ""])
            for a in c["answers"]:
                w.writerow([c["id"], a["kind"], a["label"] or "", a["text"],
                            "" if a["dice"] is None else f"{a['dice']:.4f}", a["predicted_ml"], int(a["empty"]),
                            "" if a.get("flagged") is None else int(a["flagged"])])
    plot_prompts(result, paths["png"], title)
    return {k: str(v) for k, v in paths.items()}


def plot_prompts(result: dict, path: str | os.PathLike, title: str | None = None) -> None:
    """Bars: mean Dice per phrasing (left), share of empty answers per absent structure (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phr = result["phrasings"]
    absent = result["absent"]["per_prompt"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 0.28 * max(len(phr), len(absent)) + 2.0))
    colours = {n: f"C{i}" for i, n in enumerate(result["labels"])}
    a1.barh(range(len(phr)), [p["dice_mean"] or 0 for p in phr], color=[colours[p["label"]] for p in phr])
    a1.set_yticks(range(len(phr)))
    a1.set_yticklabels([f"{p['text']}{' (name)' if p['kind'] == 'name' else ''}" for p in phr], fontsize=7)
    for x, style in ((TARGETS["paraphrase_mean_dice"], "--"), (TARGETS["paraphrase_min_dice"], ":")):
        a1.axvline(x, color="k", linestyle=style, linewidth=0.8)
    a1.set_xlim(0, 1)
    a1.invert_yaxis()
    a1.set_xlabel("mean Dice against the label (colour)")
    a1.set_title("phrasings (--: 0.85, :: 0.7)", fontsize=9)
    a2.barh(range(len(absent)), [a["empty_share"] or 0 for a in absent],
            color=["C2" if a["in_training_vocabulary"] else "C4" for a in absent])
    a2.set_yticks(range(len(absent)))
    a2.set_yticklabels([f"{a['text']}{'' if a['in_training_vocabulary'] else ' *'}" for a in absent], fontsize=7)
    a2.axvline(TARGETS["absent_empty_share"], color="k", linestyle="--", linewidth=0.8)
    a2.set_xlim(0, 1)
    a2.invert_yaxis()
    a2.set_xlabel("share of cases answered with an empty mask")
    a2.set_title(f"absent structures: {_pct(result['absent']['empty_share'])} empty "
                 "(* = not in the training vocabulary)", fontsize=9)
    fig.suptitle(title or "Prompt evaluation", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"
