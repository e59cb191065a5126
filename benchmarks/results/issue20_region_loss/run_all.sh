#!/bin/bash
# Evaluate the region-loss fine-tune (split checkpoint) like round 4: clicks with text, clicks alone, exact prompts.
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CK=${CK:?the region-loss split checkpoint (not shipped; train it with the command in README.md)}
R=${R:-/tmp/issue20_region_loss}
mkdir -p $R
E=".venv/bin/python scripts/evaluate.py --checkpoint $CK --data ../shared/data/msd-hippocampus --split-file benchmarks/results/hippocampus_split.json --part test --threads 1 --no-progress"
run() { name=$1; shift; { echo "== $*"; $E "$@" --out $R/$name; } > $R/$name.log 2>&1; echo "done $name $(date +%T)"; }
run clicks_text --clicks 5 & run clicks_only --clicks 5 --no-text & wait
run exact_mirror & run prompts_v3 --prompts benchmarks/prompts/msd_hippocampus_heldout_v3.json & wait
.venv/bin/python - <<PY
import json
R=${R:-/tmp/issue20_region_loss}
e=json.load(open(f"{R}/exact_mirror/evaluation.json")); print("exact_mirror", round(e["mean"]["dice"],4))
p=json.load(open(f"{R}/prompts_v3/prompts.json")); print("prompts_v3", round(p["paraphrases"]["mean_dice"],4), p["paraphrases"]["below_0.7"], p["absent"]["empty_share"], p["absent"]["empty_or_flagged_share"])
for n in ["clicks_text","clicks_only"]:
    c=json.load(open(f"{R}/{n}/clicks.json")); print(n, [round(x,4) for x in c["mean"]["dice_mean"]], c["mean"]["noc85_mean"], c["mean"]["noc90_mean"])
PY
echo ALL DONE
