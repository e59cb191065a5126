#!/usr/bin/env bash
# Start RefSAM3D Label in the container (or anywhere): monailabel start_server --app apps/refsam3d with
#   STUDIES   a folder or a DICOMweb URL (default /data/studies)
#   HOST, PORT  where to listen (default 0.0.0.0:8000)
#   APP_DIR   the app (default: apps/refsam3d beside this script)
#   REFSAM3D_CONF_<KEY>=value  ->  --conf <key> value   (e.g. REFSAM3D_CONF_PRESET=small, REFSAM3D_CONF_LABEL_SET=btcv;
#                                  keys in docs/app.md; MONAI Label's own settings stay MONAI_LABEL_* env vars)
# Extra arguments are passed on to start_server.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
args=(start_server --app "${APP_DIR:-$here/../apps/refsam3d}" --studies "${STUDIES:-/data/studies}"
  --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}")
while read -r name; do
  key=${name#REFSAM3D_CONF_}
  args+=(--conf "${key,,}" "${!name}")
done < <(compgen -e | grep '^REFSAM3D_CONF_' | sort || true)
echo "RefSAM3D Label: python -m monailabel.main ${args[*]} $*"
exec python -m monailabel.main "${args[@]}" "$@"
