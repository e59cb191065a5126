#!/bin/bash
# usage: PART=train N=20 grid.sh "DELTA RADIUS SOURCE" ...
cd "$(dirname "$0")/../../.."
mkdir -p "${OUT:-/tmp/region_edit}"
for cfg in "$@"; do
  set -- $cfg
  out=${OUT:-/tmp/region_edit}/g_${PART}_${N}_$1_$2_$3${NOTEXT:+_nt}
  DELTA=$1 RADIUS=$2 SOURCE=$3 .venv/bin/python benchmarks/results/issue20_region_edit/region_edit.py --checkpoint checkpoints/msd_hippocampus/refsam3d_small.pt --data ../shared/data/msd-hippocampus --split-file benchmarks/results/hippocampus_split.json --part $PART --max-cases $N --clicks 5 $NOTEXT --threads 1 --no-progress --out $out > $out.log 2>&1
  .venv/bin/python -c "
import json;c=json.load(open('$out/clicks.json'));print('$cfg', [round(x,4) for x in c['mean']['dice_mean']], round(c['mean']['noc90_mean'],2))"
done
