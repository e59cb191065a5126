#!/usr/bin/env python
"""Evaluate a RefSAM3D checkpoint on an MSD-layout folder: Dice, NSD and HD95 per case and label.

The whole volume is segmented by sliding window after the same pre-processing as the server; metrics
are MONAI's, written as ``evaluation.json``, ``evaluation.csv`` and ``evaluation.png`` in ``--out``.

    .venv/bin/python scripts/evaluate.py --checkpoint model/refsam3d_small.pt \\
        --data ../shared/data/msd-hippocampus --split-file benchmarks/results/hippocampus_split.json --part test \\
        --out results/eval --nsd-tolerance 1.0

Several checkpoints after ``--checkpoint`` are evaluated as one ensemble (nnU-Net's ensemble of folds):
their probabilities are averaged before the threshold. They must be trained on the same label set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "refsam3d"))

from lib.cli import add_runtime_arguments, start_runtime  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="a checkpoint, or several: an ensemble that averages their probabilities")
    p.add_argument("--data", required=True, help="MSD-layout folder (dataset.json, imagesTr, labelsTr)")
    p.add_argument("--split-file", help="JSON {'part': [case ids]}; evaluate the cases of --part")
    p.add_argument("--part", default="test")
    p.add_argument("--max-cases", type=int, default=0, help="only the first N cases")
    p.add_argument("--label-set", default=None, help="default: the one stored in the checkpoint")
    p.add_argument("--labels", default="all", help="comma-separated label names (default: all of the set)")
    p.add_argument("--text-encoder", default=None, help="default: the one stored in the checkpoint")
    p.add_argument("--sam-checkpoint", default=None)
    p.add_argument("--roi", default=None, help="sliding-window size (default: checkpoint / label set)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "auto"],
                   help="image encoding under bf16 autocast, as the server's --conf precision (default float32)")
    p.add_argument("--mirror-axes", default="auto",
                   help="test-time augmentation (nnU-Net's mirroring): average over flips of these spatial axes, "
                        "e.g. '0' = left-right; 'none' = one pass; default 'auto': the flips each checkpoint was "
                        "trained with, as the server's --conf mirror_axes auto (so the default scores the server's answer)")
    p.add_argument("--largest-component", action="store_true",
                   help="keep only the largest connected piece of each label's mask (nnU-Net's post-processing)")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD boundary tolerance in mm")
    p.add_argument("--no-cross-prompts", action="store_true", help="skip the swapped-prompt (routing) Dice")
    p.add_argument("--prompts", default=None,
                   help="JSON {'labels': {label: [phrasings]}, 'absent': [structures]}: Dice per phrasing and the "
                        "share of absent structures answered empty (lib/evaluation_prompts.py), instead of the "
                        "metrics above; e.g. benchmarks/prompts/msd_hippocampus_heldout.json")
    p.add_argument("--min-prompt-similarity", type=float, default=None,
                   help="with --prompts: absent structures whose prompt scores below this are counted as flagged, as "
                        "the server's min_prompt_similarity warns (default: the server's, in lib/prompt_matching.py; "
                        "-1 = never flagged)")
    p.add_argument("--clicks", type=int, default=0,
                   help="interactive protocol (lib/evaluation_clicks.py): the text answer, then up to N simulated "
                        "clicks; Dice after each click, NoC@85/90, clicks.json/.csv/.png in --out")
    p.add_argument("--no-text", action="store_true", help="with --clicks: clicks alone (the first at the target's centre)")
    p.add_argument("--click-oracle", default=None, metavar="region|ball:R",
                   help="with --clicks: each click answered by an oracle, not the model (an upper bound): the whole "
                        "error region it lands in corrected, or the error within R voxels of it")
    p.add_argument("--out", default="results/evaluation")
    add_runtime_arguments(p)
    return p


def load_members(args) -> list[tuple]:
    """Each ``--checkpoint`` -> (segmenter, label set, preset, window size); members share one text encoder per
    (name, preset, max length)."""
    from lib.labelsets import load_label_set
    from lib.model import load_checkpoint
    from lib.parsing import parse_labels, parse_mirror_axes, parse_size
    from lib.precision import resolve_precision
    from lib.training import PromptModelAdapter, TrainConfig, entries_from_label_set
    from lib.training.runner import (checkpoint_info, label_set_from_checkpoint, portable_text_encoder,
                                      resolve_text_encoder)
    from lib.weights_card import trained_flip_axes

    text_encoders: dict = {}
    try:
        requested_mirror = parse_mirror_axes(args.mirror_axes)
    except ValueError as e:
        raise SystemExit(f"--mirror-axes {e}") from None

    def load_member(path: str) -> tuple:
        info = checkpoint_info(path)
        label_set = load_label_set(args.label_set) if args.label_set else label_set_from_checkpoint(path)
        if label_set is None:
            raise SystemExit(f"{path} does not name its label set: pass --label-set")
        preset = info["config"].get("preset", "small")
        roi = parse_size(args.roi) or parse_size(info["extra"].get("roi_size")) or tuple(label_set.roi_size(preset))
        text = (resolve_text_encoder(args.text_encoder) if args.text_encoder
                else portable_text_encoder(info["config"].get("text_encoder")))
        key = (text or info["config"].get("text_encoder"), preset, info["config"].get("text_max_length"))
        model = load_checkpoint(path, sam_checkpoint=args.sam_checkpoint, text_encoder=text_encoders.get(key, text))
        text_encoders.setdefault(key, model.text_encoder)
        mirror = trained_flip_axes(info["extra"]) if requested_mirror == "auto" else requested_mirror
        member = PromptModelAdapter(model, entries_from_label_set(label_set, parse_labels(args.labels)), TrainConfig(),
                                    roi_size=roi, overlap=args.overlap, device=args.device, threshold=args.threshold,
                                    mirror_axes=mirror)
        member.precision = resolve_precision(args.precision, member.device)
        member.model.eval()
        return member, label_set, preset, roi

    members = [load_member(path) for path in args.checkpoint]
    label_set = members[0][1]
    for path, (_, other, _, _) in zip(args.checkpoint[1:], members[1:]):
        if other.name != label_set.name:
            raise SystemExit(f"{path} was trained on label set {other.name!r}, {args.checkpoint[0]} on "
                             f"{label_set.name!r}: an ensemble needs one label set (or pass --label-set)")
    return members


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start_runtime(args)
    from lib.training import EnsembleSegmenter, apply_split, msd_datalist

    members = load_members(args)
    seg, label_set, preset, _ = members[0]
    if len(members) > 1:
        seg = EnsembleSegmenter([m[0] for m in members])
    checkpoints = [str(Path(p).resolve()) for p in args.checkpoint]

    datalist = msd_datalist(args.data)
    if args.split_file:
        datalist = apply_split(datalist, args.split_file)[args.part]
    if args.max_cases:
        datalist = datalist[: args.max_cases]
    if args.prompts:
        return evaluate_prompt_file(args, seg, datalist, label_set, checkpoints, preset)
    if args.clicks or args.no_text or args.click_oracle:
        return run_click_protocol(args, members, label_set, datalist, checkpoints)
    return evaluate_segmentation(args, seg, members, label_set, datalist, checkpoints)


def evaluate_segmentation(args, seg, members: list[tuple], label_set, datalist: list[dict], checkpoints: list[str]) -> int:
    """The default: Dice, NSD and HD95 per label (and the routing matrix) on every case; reports in ``--out``."""
    from lib.evaluation import evaluate, write_reports

    def one_or_each(key: str, values: list) -> dict:
        """``{key: value}`` for one checkpoint, ``{key: [value per member]}`` for an ensemble."""
        return {key: values[0] if len(values) == 1 else values}

    entries = seg.entries
    result = evaluate(
        seg, datalist, [e.name for e in entries], [e.index for e in entries], label_set.modality,
        label_set.target_spacing, nsd_tolerance=args.nsd_tolerance, cross_prompts=not args.no_cross_prompts,
        progress=not args.no_progress, description="evaluate",
        info={**one_or_each("checkpoint", checkpoints), "label_set": label_set.name,
              **one_or_each("preset", [m[2] for m in members]), **one_or_each("roi_size", [list(m[3]) for m in members]),
              "overlap": args.overlap, "threshold": args.threshold,
              "mirror_axes": list(members[0][0].mirror_axes),
              "data": str(Path(args.data).resolve()), "split_file": args.split_file, "part": args.part},
        ct_window=label_set.ct_window if label_set.modality == "CT" else None, largest_component=args.largest_component,
    )
    preset = members[0][2]
    what = f"RefSAM3D {preset}" + (f" (ensemble of {len(members)})" if len(members) > 1 else "")
    paths = write_reports(result, args.out, title=f"{what} on {Path(args.data).name} ({result['num_cases']} cases)")
    summary = {"mean": result["mean"], "per_label": {k: {m: v.get(f"{m}_mean") for m in ("dice", "nsd", "hd95")}
                                                     for k, v in result["per_label"].items()}}
    if "routing" in result:
        summary["swapped_prompt_dice_mean"] = result["routing"]["swapped_dice_mean"]
    summary["files"] = paths
    print(json.dumps(summary, indent=1))
    return 0


def evaluate_prompt_file(args, seg, datalist, label_set, checkpoints, preset) -> int:
    """``--prompts``: every phrasing and absent structure of the file on every case (lib/evaluation_prompts.py)."""
    from lib.evaluation_prompts import evaluate_prompts, load_prompt_file, write_prompt_reports
    from lib.training.runner import checkpoint_info

    prompt_file = load_prompt_file(args.prompts, label_set)
    meta = checkpoint_info(checkpoints[0])["extra"]
    flagged = None
    from lib.prompt_matching import DEFAULT_MIN_SIMILARITY

    minimum = DEFAULT_MIN_SIMILARITY if args.min_prompt_similarity is None else args.min_prompt_similarity
    if minimum > -1 and hasattr(seg, "model"):  # what the server warns about, same encoder
        from lib.labelsets import trained_phrasings
        from lib.prompt_matching import PromptMatcher, encoder_embed

        matcher = PromptMatcher(trained_phrasings(meta, label_set), encoder_embed(seg.model.text_encoder))
        flagged = lambda text: matcher.match(text).score < minimum  # noqa: E731
    result = evaluate_prompts(seg, datalist, label_set, prompt_file, meta, flagged=flagged,
                              progress=not args.no_progress,
                              info={"checkpoint": checkpoints, "label_set": label_set.name, "preset": preset,
                                    "mirror_axes": list(getattr(seg, "mirror_axes", ())),
                                    "data": str(Path(args.data).resolve()), "split_file": args.split_file,
                                    "part": args.part})
    paths = write_prompt_reports(result, args.out, title=f"RefSAM3D {preset}: phrasings of {Path(args.prompts).name} "
                                                          f"on {result['num_cases']} cases")
    print(json.dumps({k: result[k] for k in ("exact_prompt_dice", "exact_name_dice", "paraphrases", "targets")}
                     | {"absent_empty_share": result["absent"]["empty_share"],
                        "absent_empty_share_in_vocabulary": result["absent"]["empty_share_in_vocabulary"],
                        "absent_empty_share_not_in_vocabulary": result["absent"]["empty_share_not_in_vocabulary"],
                        "files": paths}, indent=1))
    return 0


def run_click_protocol(args, members, label_set, datalist, checkpoints) -> int:
    """``--clicks N [--no-text]``: the simulated-annotator protocol of lib/evaluation_clicks.py."""
    from lib.evaluation_clicks import evaluate_clicks, write_click_reports

    if args.clicks < 1:
        raise SystemExit("--no-text and --click-oracle need --clicks N (N >= 1)")
    if len(members) > 1 or args.largest_component:
        raise SystemExit("--clicks evaluates one checkpoint, without --largest-component")
    seg, _, preset, roi = members[0]
    result = evaluate_clicks(seg.model, seg.entries, datalist, label_set.modality, label_set.target_spacing,
                             args.clicks, use_text=not args.no_text, roi_size=roi, threshold=args.threshold,
                             ct_window=label_set.ct_window if label_set.modality == "CT" else None,
                             progress=not args.no_progress, oracle=args.click_oracle, mirror_axes=seg.mirror_axes,
                             info={"checkpoint": checkpoints[0], "label_set": label_set.name, "preset": preset,
                                   "roi_size": list(roi), "data": str(Path(args.data).resolve()),
                                   "split_file": args.split_file, "part": args.part})
    mode = "clicks alone" if args.no_text else "text + clicks"
    if args.click_oracle:
        mode = f"text + clicks answered by an oracle ({args.click_oracle})"
    paths = write_click_reports(result, args.out, title=f"RefSAM3D {preset}, {mode} ({result['num_cases']} cases)")
    print(json.dumps({"clicks": result["clicks"], "mean": result["mean"], "per_label": result["per_label"],
                      "files": paths}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
