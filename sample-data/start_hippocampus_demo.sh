#!/usr/bin/env bash
# A working text-prompted demo without any download: the shipped RefSAM3D small checkpoint trained on MSD
# hippocampus (checkpoints/msd_hippocampus, MiniLM text encoder) served on held-out hippocampus MRIs.
#   bash sample-data/start_hippocampus_demo.sh        # http://127.0.0.1:8000, prompts "anterior hippocampus" ...
# Weights go to model/msd_hippocampus/ (git-ignored), so fine-tuning from the viewer never touches the shipped file.
# Environment: HOST, PORT (default 127.0.0.1:8000), CASES (5), STUDIES (sample-data/hippocampus-studies),
# MODEL_DIR (model/msd_hippocampus), OFFLINE=1 (never download), SKIP_SETUP=1 (use the existing .venv as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SKIP_SETUP:-0}" != 1 ] && [ -f scripts/setup.sh ]; then bash scripts/setup.sh; fi
studies=${STUDIES:-sample-data/hippocampus-studies}
model_dir=$(mkdir -p "${MODEL_DIR:-model/msd_hippocampus}" && cd "${MODEL_DIR:-model/msd_hippocampus}" && pwd)
offline=()
if [ "${OFFLINE:-0}" = 1 ]; then offline=(--offline); fi
.venv/bin/python sample-data/get_sample_data.py --hippocampus --cases "${CASES:-5}" --dest "$studies" "${offline[@]}"
[ -f "$model_dir/refsam3d_small.pt" ] || cp checkpoints/msd_hippocampus/refsam3d_small.pt "$model_dir/"
exec .venv/bin/python -m monailabel.main start_server --app apps/refsam3d --studies "$studies" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --conf preset small --conf label_set msd_hippocampus \
  --conf text_encoder minilm --conf use_pretrained_model false --conf model_dir "$model_dir" "$@"
