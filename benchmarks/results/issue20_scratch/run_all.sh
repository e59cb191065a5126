#!/bin/bash
# Round 4: evaluate the fine-tuned split checkpoint (mirrored = evaluate.py's default auto), two at a time.
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CK=${CK:-/tmp/scratch/refsam3d_small.pt}
R=${R:-/tmp/scratch_eval}
mkdir -p $R
E=".venv/bin/python scripts/evaluate.py --checkpoint $CK --data ../shared/data/msd-hippocampus --split-file benchmarks/results/hippocampus_split.json --part test --threads 1 --no-progress"
run() { name=$1; shift; { echo "== $*"; $E "$@" --out $R/$name; } > $R/$name.log 2>&1; echo "done $name $(date +%T)"; }
run exact_mirror & run exact_single --mirror-axes none & wait
run prompts_v3 --prompts benchmarks/prompts/msd_hippocampus_heldout_v3.json & run clicks_only --clicks 5 --no-text & wait
run clicks_text --clicks 5 & run prompts_v2 --prompts benchmarks/prompts/msd_hippocampus_heldout_v2.json & wait
run prompts_v1 --prompts benchmarks/prompts/msd_hippocampus_heldout.json
P=benchmarks/results/issue25_mirroring
.venv/bin/python scripts/compare.py $P/exact_mirrored_auto/evaluation.json $R/exact_mirror/evaluation.json --names round3 scratch --out $R/vs_round3 > $R/vs_round3.log 2>&1
.venv/bin/python scripts/compare.py benchmarks/results/issue25_20_round3/text_only_single_pass/evaluation.json $R/exact_mirror/evaluation.json --names text_only_one_pass_server_before scratch_mirrored --out $R/vs_before > $R/vs_before.log 2>&1
.venv/bin/python - <<'PY'
import json
R="/tmp/scratch_eval"
for n in ["exact_mirror","exact_single"]:
    e=json.load(open(f"{R}/{n}/evaluation.json")); print(n, e["info"]["mirror_axes"], round(e["mean"]["dice"],4))
for n in ["prompts_v3","prompts_v2","prompts_v1"]:
    p=json.load(open(f"{R}/{n}/prompts.json")); print(n, round(p["paraphrases"]["mean_dice"],4), p["paraphrases"]["below_0.7"], p["absent"]["empty_share"], p["absent"]["empty_or_flagged_share"])
for n in ["clicks_text","clicks_only"]:
    c=json.load(open(f"{R}/{n}/clicks.json")); print(n, [round(x,4) for x in c["mean"]["dice_mean"]], c["mean"]["noc85_mean"], c["mean"]["noc90_mean"])
PY
.venv/bin/python scripts/compare.py benchmarks/results/issue25_20_round3/text_only_single_pass/evaluation.json $R/exact_single/evaluation.json --names text_only_one_pass scratch_one_pass --out $R/vs_text_only_single > $R/vs_text_only_single.log 2>&1
tail -8 $R/vs_text_only_single.log | head -6
tail -8 $R/vs_round3.log | head -6
echo ALL DONE
