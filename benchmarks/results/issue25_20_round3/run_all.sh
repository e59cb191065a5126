#!/bin/bash
# Round 3: evaluate the fine-tuned split checkpoint: exact (mirror, single), phrasings v1/v2/v3, clicks, oracle ball:3. Two at a time.
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CK=${CK:-/work/retrain/r3/split/refsam3d_small.pt}
R=${R:-benchmarks/results/issue25_20_round3}
mkdir -p $R
E=".venv/bin/python scripts/evaluate.py --checkpoint $CK --data ../shared/data/msd-hippocampus --split-file benchmarks/results/hippocampus_split.json --part test --threads 1 --no-progress"
run() { name=$1; shift; { echo "== $*"; $E "$@" --out $R/$name; } > $R/$name.log 2>&1; echo "done $name $(date +%T)"; }
run exact_mirror --mirror-axes 0 & run exact_single & wait
run prompts_v3 --mirror-axes 0 --prompts benchmarks/prompts/msd_hippocampus_heldout_v3.json & run prompts_v2 --mirror-axes 0 --prompts benchmarks/prompts/msd_hippocampus_heldout_v2.json & wait
run prompts_v1 --mirror-axes 0 --prompts benchmarks/prompts/msd_hippocampus_heldout.json & run clicks_only --clicks 5 --no-text & wait
CK0=checkpoints/msd_hippocampus/refsam3d_small.pt; { echo "== round-2 checkpoint on v3"; .venv/bin/python scripts/evaluate.py --checkpoint $CK0 --data ../shared/data/msd-hippocampus --split-file benchmarks/results/hippocampus_split.json --part test --threads 1 --no-progress --mirror-axes 0 --prompts benchmarks/prompts/msd_hippocampus_heldout_v3.json --out $R/prompts_v3_before; } > $R/prompts_v3_before.log 2>&1 & run clicks_text --clicks 5 & wait

P=benchmarks/results/issue25_20_round2
.venv/bin/python scripts/compare.py $P/exact_mirror/evaluation.json $R/exact_mirror/evaluation.json --names round2 round3 --out $R/vs_round2 > $R/vs_round2.log 2>&1
echo ALL DONE
