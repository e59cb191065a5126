#!/usr/bin/env python3
"""The one table of ``benchmarks/gpu_check.sh``: stage outcomes + the numbers their JSON files hold, against the targets.

Reads ``<work>/stages.tsv`` (name, status, seconds, note per stage, written by the shell script) and the stage
results (``server.json``, ``whole_ct.json``, ``whole_ct_compile.json``, ``cuda_tests.xml``,
``train_<preset>/…/train_stats.json``, ``env.json``); prints a Markdown table (metric | value | target | status) and
writes the same rows as JSON.  Standard library only (runs before anything is known about the environment).
Exit status 1 when a stage failed, timed out, was not run, or left no result: every row must hold a number.

    python3 benchmarks/gpu_check_report.py WORK_DIR --json WORK_DIR/gpu_check.json [--json "$OUT/gpu_check.json"] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# (stage, metric, where the value is, target text, check of the value or None)
SERVER_ROWS = [
    ("start_to_model_ready_s", "server start -> model ready (s)", "<= 10 s", lambda v, r: v <= 10),
    ("one_prompt_cold_s", "server: whole abdominal CT, one prompt, cold (s)", "<= 1 s", lambda v, r: v <= 1.0),
    ("13_prompts_cold_s", "server: all 13 BTCV labels, cold (s)", "<= 1.5 s", lambda v, r: v <= 1.5),
    ("second_prompt_cached_s", "server: a further prompt, cached encoding (s)", "<= 5 % of cold",
     lambda v, r: v <= 0.05 * r["one_prompt_cold_s"]),
    ("13_prompts_cached_s", "server: 13 labels, cached encoding (s)", "", None),
    ("server_pre_s", "server side: pre-processing (s)", "pre + post + write <= 1 s",
     lambda v, r: v + r["server_post_write_s"] <= 1.0),
    ("server_infer_s", "server side: inference (s)", "", None),
    ("server_post_write_s", "server side: post-processing + writing (s)", "see pre-processing", None),
]
WHOLE_CT_ROWS = [
    ("one_prompt_cold_s", "whole CT in-process {mode}: one prompt cold (s)", "<= 1 s (model part)", lambda v: v <= 1.0),
    ("13_prompts_cold_s", "whole CT in-process {mode}: 13 labels cold (s)", "<= 1.5 s (model part)", lambda v: v <= 1.5),
    ("further_prompt_cached_s", "whole CT in-process {mode}: further prompt cached (s)", "", None),
    ("warmup_s", "whole CT in-process {mode}: first run incl. autotune/compile (s)", "", None),
    ("peak_gpu_gib", "whole CT in-process {mode}: peak GPU memory (GiB)", "", None),
]


def read_stages(work: Path) -> dict:
    stages = {}
    path = work / "stages.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, status, seconds, note = (line.split("\t") + ["", "", ""])[:4]
        stages[name] = {"status": status, "seconds": seconds, "note": note}
    return stages


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def row(metric: str, value, target: str = "", status: str = "") -> dict:
    return {"metric": metric, "value": value, "target": target, "status": status}


def judged(value, target: str, check) -> dict:
    """``meets`` / ``misses`` when the row has a target."""
    if check is None:
        return {"target": target, "status": "measured"}
    return {"target": target, "status": "meets" if check(value) else "misses"}


def test_rows(work: Path, dry: bool) -> list:
    xml = work / "cuda_tests.xml"
    if not xml.exists():
        return [row("CUDA tests", None, "all pass, none skipped", "NO RESULT")]
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n, fail, err, skip = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    passed = n - fail - err - skip
    ok = n > 0 and not fail and not err and (dry or not skip)
    status = ("dry run: skips expected without CUDA" if dry else "ok") if ok else "FAILED"
    return [row("CUDA tests (passed / failed / skipped)", f"{passed} / {fail + err} / {skip}", "all pass, none skipped", status)]


def server_rows(work: Path) -> list:
    data = load_json(work / "server.json")
    if not data:
        return [row(label, None, target, "NO RESULT") for _, label, target, _ in SERVER_ROWS]
    r = data[0]
    out = [row("server preset / roi / overlap", f"{r['preset']} / {r['roi_size']} / {r['sw_overlap']}", "", "")]
    for key, label, target, check in SERVER_ROWS:
        out.append(row(label, r[key], **judged(r[key], target, None if check is None else (lambda v, c=check: c(v, r)))))
    return out


def whole_ct_rows(work: Path) -> list:
    out = []
    for name in ("whole_ct.json", "whole_ct_compile.json"):
        data = load_json(work / name)
        if not data:
            out.append(row(f"whole CT in-process ({name})", None, "", "NO RESULT"))
            continue
        for mode, r in data["modes"].items():
            for key, label, target, check in WHOLE_CT_ROWS:
                if key in r:
                    out.append(row(label.format(mode=mode), r[key], **judged(r[key], target, check)))
            agree = [k for k in r if k.startswith("agreement_with_")]
            if agree and name == "whole_ct.json" and mode != "fp32":
                out.append(row(f"whole CT in-process {mode}: label agreement with fp32 (random weights: logits near "
                               f"the threshold, not a quality measure)", r[agree[0]], "", "measured"))
    return out


def train_rows(work: Path) -> list:
    out = []
    for preset in ("small", "vit_b"):
        stats = sorted((work / f"train_{preset}").glob("*.run/train_stats.json"))
        data = load_json(stats[0]) if stats else None
        rate = data.get("iterations_per_s") if data else None
        label = f"training steps/s, {preset} (batch 2, crop = roi, bf16 autocast on CUDA)"
        out.append(row(label, rate, "measured", "measured" if rate else "NO RESULT"))
    return out


def build_rows(work: Path, dry: bool) -> list:
    env = load_json(work / "env.json") or {}
    rows = [row("device", env.get("device"), "", "DRY RUN ON CPU: not GPU numbers" if dry else "")]
    rows += [row(k, env.get(k)) for k in ("python", "torch", "environment", "setup_s", "flash_sdp_available")]
    rows += test_rows(work, dry) + server_rows(work) + whole_ct_rows(work) + train_rows(work)
    for r in rows:  # a measured row without a number is a failure (on the CPU, GPU memory has none)
        if r["value"] is None and r["status"] in ("measured", "meets", "misses"):
            r["status"] = "n/a on the CPU" if dry else "NO RESULT"
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path)
    p.add_argument("--json", action="append", default=[], help="write the table here too (repeatable)")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    stages = read_stages(args.work)
    rows = build_rows(args.work, args.dry_run)
    bad_stages = {k: v for k, v in stages.items() if v["status"] != "ok"}
    no_result = [r["metric"] for r in rows if r["status"] in ("NO RESULT", "FAILED")]
    print("\n| metric | value | target | status |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['metric']} | {r['value'] if r['value'] is not None else '-'} | {r['target']} | {r['status']} |")
    print("\n| stage | status | seconds | note |\n|---|---|---|---|")
    for name, s in stages.items():
        print(f"| {name} | {s['status']} | {s['seconds']} | {s['note']} |")
    ok = not bad_stages and not no_result
    what = "GPU CHECK DRY RUN (plumbing only, CPU)" if args.dry_run else "GPU CHECK"
    print(f"\n{what} {'PASSED' if ok else 'FAILED'}" + ("" if ok else f": stages {sorted(bad_stages) or '-'}; "
                                                      f"rows without a result {no_result or '-'}"))
    doc = {"dry_run": args.dry_run, "passed": ok, "rows": rows, "stages": stages}
    for path in args.json:
        Path(path).write_text(json.dumps(doc, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
