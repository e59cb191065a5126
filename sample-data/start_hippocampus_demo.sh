#!/usr/bin/env bash
# A working text-prompted demo without any download: the shipped RefSAM3D small checkpoint trained on MSD
# hippocampus (checkpoints/msd_hippocampus, MiniLM text encoder) served on held-out hippocampus MRIs.
#   bash sample-data/start_hippocampus_demo.sh        # http://127.0.0.1:8000, prompts "anterior hippocampus" ...
# Weights go to model/msd_hippocampus/ (git-ignored), so fine-tuning from the viewer never touches the shipped file.
# Env: HOST, PORT, CASES (held-out cases to serve, default 5), SKIP_SETUP=1 (scripts/setup.sh already ran).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SKIP_SETUP:-}" ] && [ -f scripts/setup.sh ]; then bash scripts/setup.sh; fi
.venv/bin/python sample-data/get_sample_data.py --hippocampus --cases "${CASES:-5}" --dest sample-data/hippocampus-studies
mkdir -p model/msd_hippocampus
[ -f model/msd_hippocampus/refsam3d_small.pt ] || cp checkpoints/msd_hippocampus/refsam3d_small.pt model/msd_hippocampus/
exec .venv/bin/python -m monailabel.main start_server --app apps/refsam3d --studies sample-data/hippocampus-studies \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --conf preset small --conf label_set msd_hippocampus \
  --conf text_encoder minilm --conf use_pretrained_model false --conf model_dir "$PWD/model/msd_hippocampus" "$@"
