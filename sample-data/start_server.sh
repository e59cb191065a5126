#!/usr/bin/env bash
# Set up the environment, bring sample studies, and start RefSAM3D Label on them (http://127.0.0.1:8000),
# serving weights whose masks mean something:
#   bash sample-data/start_server.sh                        # trained CT weights in model/? CT; else the shipped
#                                                           # hippocampus model on held-out MRIs (offline)
#   DEMO=ct bash sample-data/start_server.sh                # CT sample studies, vit_b, label set btcv (as before)
#   DEMO=hippocampus bash sample-data/start_server.sh       # always the shipped hippocampus demo
#   bash sample-data/start_server.sh --conf preset small    # extra arguments go to monailabel start_server; with
#                                                           # --conf preset/label_set (or LABEL_SET) it is CT mode
# Env: HOST, PORT (default 127.0.0.1:8000), LABEL_SET (btcv), DEMO=auto|ct|hippocampus (default auto),
# STUDIES (sample-data/studies; the demo's: sample-data/hippocampus-studies), CASES and MODEL_DIR (demo only),
# OFFLINE=1 (never try the internet for sample studies), SKIP_SETUP=1 (use the existing .venv as it is).
set -euo pipefail
cd "$(dirname "$0")/.."

preset=vit_b ct_asked=${LABEL_SET:+yes}
prev=
for arg in "$@"; do  # --conf preset X / --conf label_set X among the extra arguments
  if [ "$prev" = preset ]; then preset=$arg; fi
  if [ "$prev" = --conf ] && { [ "$arg" = label_set ] || [ "$arg" = preset ]; }; then ct_asked=yes; fi
  prev=$arg
done
trained="model/refsam3d_${preset}.pt"
demo=${DEMO:-auto}
if [ "$demo" = auto ]; then
  if [ -n "$ct_asked" ] || [ -f "$trained" ]; then demo=ct; else demo=hippocampus; fi
fi
case "$demo" in ct | hippocampus) ;; *) echo "DEMO must be auto, ct or hippocampus, got '$demo'" >&2; exit 2 ;; esac

if [ "${SKIP_SETUP:-0}" != 1 ] && [ -f scripts/setup.sh ]; then bash scripts/setup.sh; fi
line="=================================================================================================="
if [ ! -f "$trained" ]; then
  if [ -f model/sam_vit_b_01ec64.pth ] && { [ -d model/text_encoders/openai__clip-vit-base-patch16 ] ||
    [ -d "${HF_HOME:-$HOME/.cache/huggingface}/hub/models--openai--clip-vit-base-patch16" ]; }; then
    have="SAM ViT-B and CLIP weights are here (model/), but there are"
  else
    have="There are"
  fi
  echo "$line"
  echo " RefSAM3D Label: $have no trained RefSAM3D CT weights ($trained): CT masks mean nothing until"
  echo " the model is trained. Train: .venv/bin/python scripts/train.py --data <MSD-layout CT folder> --label-set btcv"
  echo "   --preset $preset (docs/training.md), or label studies and POST /train/refsam3d; then DEMO=ct."
  if [ "$demo" = hippocampus ]; then
    echo " Serving now: the shipped RefSAM3D small model trained on MSD hippocampus (checkpoints/msd_hippocampus,"
    echo " test Dice 0.891) on held-out MRIs; prompts: anterior hippocampus, posterior hippocampus."
  else
    echo " Serving now (DEMO=ct): UNTRAINED CT weights, as OHIF's panel title and /info say."
  fi
  echo "$line"
fi

if [ "$demo" = hippocampus ]; then
  SKIP_SETUP=1 exec bash sample-data/start_hippocampus_demo.sh "$@"
fi
studies=${STUDIES:-sample-data/studies}
offline=()
if [ "${OFFLINE:-0}" = 1 ]; then offline=(--offline); fi
.venv/bin/python sample-data/get_sample_data.py --dest "$studies" "${offline[@]}"
exec .venv/bin/python -m monailabel.main start_server --app apps/refsam3d --studies "$studies" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --conf label_set "${LABEL_SET:-btcv}" "$@"
