#!/usr/bin/env bash
# Set up the environment, bring the sample studies, and start RefSAM3D Label on them (http://127.0.0.1:8000).
#   bash sample-data/start_server.sh                      # vit_b, label set btcv, port 8000
#   bash sample-data/start_server.sh --conf preset small  # extra arguments go to monailabel start_server
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f scripts/setup.sh ]; then bash scripts/setup.sh; fi
.venv/bin/python sample-data/get_sample_data.py
exec .venv/bin/python -m monailabel.main start_server --app apps/refsam3d --studies sample-data/studies \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --conf label_set "${LABEL_SET:-btcv}" "$@"
