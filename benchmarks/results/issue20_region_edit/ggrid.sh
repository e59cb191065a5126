#!/bin/bash
cd "$(dirname "$0")/../../.."
mkdir -p "${OUT:-/tmp/region_edit}"
for cfg in "$@"; do
  set -- $cfg
  out=${OUT:-/tmp/region_edit}/gg_${PART}_${N}_$1_$2${NOTEXT:+_nt}
  GATE=$1 GMODE=$2 .venv/bin/python benchmarks/results/issue20_region_edit/gate.py --checkpoint checkpoints/msd_hippocampus/refsam3d_small.pt --data ../shared/data/msd-hippocampus --split-file benchmarks/results/hippocampus_split.json --part $PART --max-cases $N --clicks 5 $NOTEXT --threads 1 --no-progress --out $out > $out.log 2>&1
  .venv/bin/python -c "
import json,numpy as np;c=json.load(open('$out/clicks.json'));
dr=[x for cs in c['cases'] for r in cs['labels'].values() if 'dice' in r for x in np.diff(r['dice']) if x<0]
print('$cfg${NOTEXT:+ nt}', [round(x,4) for x in c['mean']['dice_mean']], round(c['mean']['noc90_mean'],2), 'drops',len(dr),round(sum(dr),3))"
done
