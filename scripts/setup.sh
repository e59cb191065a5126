#!/usr/bin/env bash
# Create .venv and install everything RefSAM3D Label needs from requirements.txt (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# System packages: a real Orthanc PACS with its DICOMweb plugin (used by the DICOMweb tests) and Debian's Chromium
# (driven headless by playwright in the OHIF browser test; playwright's own browser download is never used).
if [ ! -x /usr/sbin/Orthanc ] || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb chromium >/dev/null
  else
    echo "WARNING: Orthanc + orthanc-dicomweb + chromium are not installed and this is not root: the DICOMweb and browser tests will be skipped (and fail under CI=true)" >&2
  fi
fi
# The /annotate/ page's viewer: NiiVue from npm (its prebuilt dist/ is served as is; no build step), into the
# git-ignored apps/refsam3d/lib/web/node_modules/, pinned by package-lock.json.
if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "WARNING: npm is not installed and this is not root: the /annotate/ page has no viewer (its browser test fails under CI=true)" >&2
  fi
fi
web=apps/refsam3d/lib/web
if command -v npm >/dev/null && ! cmp -s "$web/package-lock.json" "$web/node_modules/.package-lock.json.installed"; then
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.package-lock.json.installed)
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --upgrade pip
  .venv/bin/pip install -r requirements.txt
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import monailabel, monai, segment_anything, transformers, torch; print('environment ready: monailabel', monailabel.__version__, '| monai', monai.__version__, '| torch', torch.__version__)"
