#!/bin/bash
# usage: PART=train N=20 [NOTEXT=--no-text] grid.sh "region|intensity DELTA RADIUS SOURCE" "gate GATE GMODE" "none" ...
# prints, per rule: Dice after 0..5 clicks (1..5 without text), NoC@90, and the steps that lowered the Dice (count, sum)
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/region_edit}
mkdir -p "$OUT"
for cfg in "$@"; do
  set -- $cfg
  out=$OUT/g_${PART}_${N}_$(echo "$cfg" | tr ' ' _)${NOTEXT:+_nt}
  case $1 in
    region|intensity) env="EDIT=$1 DELTA=$2 RADIUS=$3 SOURCE=$4" ;;
    gate) env="EDIT=gate GATE=$2 GMODE=$3" ;;
    *) env="EDIT=none" ;;
  esac
  env $env .venv/bin/python benchmarks/results/issue20_region_edit/click_edits.py --checkpoint checkpoints/msd_hippocampus/refsam3d_small.pt \
    --data ../shared/data/msd-hippocampus --split-file benchmarks/results/hippocampus_split.json --part $PART --max-cases $N \
    --clicks 5 $NOTEXT --threads 1 --no-progress --out $out > $out.log 2>&1
  .venv/bin/python -c "
import json, numpy as np
c = json.load(open('$out/clicks.json'))
dr = [x for cs in c['cases'] for r in cs['labels'].values() if 'dice' in r for x in np.diff(r['dice']) if x < 0]
print('$cfg${NOTEXT:+ (no text)}', [round(x, 4) for x in c['mean']['dice_mean']], round(c['mean']['noc90_mean'], 2), 'drops', len(dr), round(sum(dr), 3))"
done
