#!/bin/bash
# Evaluate one hippocampus split checkpoint as issue 20's rounds were evaluated: the 40 test cases of
# hippocampus_split.json, mirrored as the server answers (evaluate.py's default) unless said; two runs at a time;
# then paired comparisons with the shipped round-3 weights and a one-line summary per run.
#
#   CK=/tmp/ck.pt R=/tmp/eval NAME=candidate [RUNS="exact_mirror clicks_text ..."] bash benchmarks/results/evaluate_click_round.sh
#
# RUNS (default: all): exact_mirror exact_single prompts_v1 prompts_v2 prompts_v3 clicks_text clicks_only
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CK=${CK:?CK=the checkpoint to evaluate}
R=${R:?R=the output folder}
NAME=${NAME:-candidate}
RUNS=${RUNS:-"exact_mirror exact_single prompts_v3 clicks_only clicks_text prompts_v2 prompts_v1"}
P=benchmarks/prompts
ROUND3=benchmarks/results/issue25_mirroring/exact_mirrored_auto/evaluation.json
TEXT_ONLY_ONE_PASS=benchmarks/results/issue25_20_round3/text_only_single_pass/evaluation.json
mkdir -p "$R"

arguments() {
  case $1 in
    exact_mirror) ;;
    exact_single) echo --mirror-axes none ;;
    prompts_v1) echo --prompts $P/msd_hippocampus_heldout.json ;;
    prompts_v2) echo --prompts $P/msd_hippocampus_heldout_v2.json ;;
    prompts_v3) echo --prompts $P/msd_hippocampus_heldout_v3.json ;;
    clicks_text) echo --clicks 5 ;;
    clicks_only) echo --clicks 5 --no-text ;;
    *) echo "unknown run $1" >&2; exit 2 ;;
  esac
}
run() {
  local args; args=$(arguments "$1") || exit 2
  { echo "== $args"
    .venv/bin/python scripts/evaluate.py --checkpoint "$CK" --data ../shared/data/msd-hippocampus \
      --split-file benchmarks/results/hippocampus_split.json --part test --threads 1 --no-progress $args --out "$R/$1"
  } > "$R/$1.log" 2>&1
  echo "done $1 $(date +%T)"
}
set -- $RUNS
while [ $# -gt 0 ]; do
  run "$1" & [ $# -gt 1 ] && run "$2" & wait
  shift; [ $# -gt 0 ] && shift
done

compare() {  # compare A B name_a name_b out
  [ -f "$2" ] || return 0
  .venv/bin/python scripts/compare.py "$1" "$2" --names "$3" "$4" --out "$R/$5" > "$R/$5.log" 2>&1
  echo "== $5"; tail -8 "$R/$5.log" | head -6
}
compare $ROUND3 "$R/exact_mirror/evaluation.json" round3 "$NAME" vs_round3
compare $TEXT_ONLY_ONE_PASS "$R/exact_mirror/evaluation.json" text_only_one_pass_server_before "${NAME}_mirrored" vs_before
compare $TEXT_ONLY_ONE_PASS "$R/exact_single/evaluation.json" text_only_one_pass "${NAME}_one_pass" vs_text_only_single
R="$R" .venv/bin/python - <<'PY'
import json, os
from pathlib import Path
R = Path(os.environ["R"])
for n in ["exact_mirror", "exact_single"]:
    if (R / n / "evaluation.json").is_file():
        e = json.loads((R / n / "evaluation.json").read_text()); print(n, e["info"]["mirror_axes"], round(e["mean"]["dice"], 4))
for n in ["prompts_v3", "prompts_v2", "prompts_v1"]:
    if (R / n / "prompts.json").is_file():
        p = json.loads((R / n / "prompts.json").read_text())
        print(n, round(p["paraphrases"]["mean_dice"], 4), p["paraphrases"]["below_0.7"], p["absent"]["empty_share"],
              p["absent"]["empty_or_flagged_share"])
for n in ["clicks_text", "clicks_only"]:
    if (R / n / "clicks.json").is_file():
        c = json.loads((R / n / "clicks.json").read_text())
        print(n, [round(x, 4) for x in c["mean"]["dice_mean"]], c["mean"]["noc85_mean"], c["mean"]["noc90_mean"])
PY
echo ALL DONE
