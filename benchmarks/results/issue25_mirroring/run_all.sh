#!/bin/bash
# Issue 25: the server mirrors (--conf mirror_axes auto); evaluate.py's default scores the same answer.
# Shipped checkpoint (round 3, git 9b74b7b); 40 test cases of the split; one torch thread each, two at a time.
cd "$(dirname "$0")/../../.." && export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
R=benchmarks/results/issue25_mirroring
E=".venv/bin/python scripts/evaluate.py --checkpoint checkpoints/msd_hippocampus/refsam3d_small.pt --data ../shared/data/msd-hippocampus --split-file benchmarks/results/hippocampus_split.json --part test --threads 1 --no-progress"
$E --out $R/exact_mirrored_auto > $R/exact_mirrored_auto.log 2>&1 & $E --clicks 5 --no-text --out $R/clicks_only > $R/clicks_only.log 2>&1 & wait
$E --clicks 5 --out $R/clicks_text > $R/clicks_text.log 2>&1 & $E --mirror-axes none --out $R/exact_one_pass > $R/exact_one_pass.log 2>&1 & wait
# the real server's answers over REST, mirrored (auto) and one pass: label maps, then the click protocol as OHIF sends it
.venv/bin/python benchmarks/bench_rest_dice.py --json $R/rest_dice.json > $R/rest_dice.log 2>&1
.venv/bin/python benchmarks/bench_rest_dice.py --clicks 5 --json $R/rest_clicks_text.json --png $R/rest_clicks_text.png > $R/rest_clicks_text.log 2>&1
.venv/bin/python benchmarks/bench_rest_dice.py --clicks 5 --no-text --json $R/rest_clicks_only.json --png $R/rest_clicks_only.png > $R/rest_clicks_only.log 2>&1
# the server's answer now (round 3, mirrored) against the server's answer before issue 25 (text-only, one pass)
P=benchmarks/results/issue25_20_round3
.venv/bin/python scripts/compare.py $P/text_only_single_pass/evaluation.json $P/exact_mirror/evaluation.json \
    --names text_only_one_pass_server_before round3_mirrored_server_now --out $R/server_now_vs_before
# click latency (decoder-only reruns, now mirrored)
.venv/bin/python benchmarks/bench_clicks.py --settings hippocampus --repeats 3 --json $R/bench_clicks_hippocampus_mirrored.json
# diagnostics/: the flipped pass alone (eval_flip_only.py) and weight soups (make_soup.py), see the experiment log
