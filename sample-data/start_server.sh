#!/usr/bin/env bash
# Set up the environment, bring the sample studies, and start RefSAM3D Label on them (http://127.0.0.1:8000).
#   bash sample-data/start_server.sh                      # vit_b, label set btcv, port 8000
#   bash sample-data/start_server.sh --conf preset small  # extra arguments go to monailabel start_server
# Environment: HOST, PORT (default 127.0.0.1:8000), LABEL_SET (btcv), STUDIES (sample-data/studies),
# OFFLINE=1 (never try the internet for sample studies), SKIP_SETUP=1 (use the existing .venv as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SKIP_SETUP:-0}" != 1 ] && [ -f scripts/setup.sh ]; then bash scripts/setup.sh; fi
studies=${STUDIES:-sample-data/studies}
offline=()
if [ "${OFFLINE:-0}" = 1 ]; then offline=(--offline); fi
.venv/bin/python sample-data/get_sample_data.py --dest "$studies" "${offline[@]}"
exec .venv/bin/python -m monailabel.main start_server --app apps/refsam3d --studies "$studies" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --conf label_set "${LABEL_SET:-btcv}" "$@"
