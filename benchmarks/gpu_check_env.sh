# shellcheck shell=bash
# Sourced by benchmarks/gpu_check.sh: setup_python sets PY (a Python with the project's requirements and, unless a
# dry run, torch with CUDA) and DATA (the real-data folder), and writes $WORK/env.json.  Needs log, REPO, WORK, DRY.
# Installs nothing beyond requirements.txt: the carried packages (benchmarks/gpu_carry.sh) are requirements.txt's
# packages (and their dependencies) that the machine's python3 lacks, at the versions the project's venv holds.

PROBE='import sys, torch, monai, monailabel, segment_anything, transformers, nibabel
sys.exit(0 if sys.argv[1] == "1" or torch.cuda.is_available() else 3)'

probe() { timeout 120 "$1" -c "$PROBE" "$DRY" >/dev/null 2>&1; }

fresh_venv() {  # a venv from requirements.txt alone (needs a package registry), reused while requirements.txt is unchanged
  local venv=${GPU_CHECK_VENV:-$HOME/.cache/refsam3d-gpu-check/venv} want limit=${GPU_CHECK_PIP_TIMEOUT:-420}
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    log "creating $venv: pip install -r requirements.txt (timeout ${limit}s; counts in the budget)"
    python3 -m venv "$venv" || return 1
    timeout "$limit" "$venv/bin/pip" install -q -r requirements.txt || { log "pip install -r requirements.txt failed"; return 1; }
    echo "$want" >"$venv/.requirements.sha256"
  fi
  PY=$venv/bin/python
}

install_carry() {  # .gpu_carry/bundle.tar.xz.part-* -> joined, sha256-checked, unpacked: site/ on PYTHONPATH, data/
  local manifest=.gpu_carry/bundle.manifest dest=$WORK/carry missing=() kind name size want
  while read -r kind name size; do
    [ "$kind" = part ] || continue
    [ "$(stat -c %s ".gpu_carry/$name" 2>/dev/null)" = "$size" ] || missing+=("$name")
  done <"$manifest"
  if [ "${#missing[@]}" -gt 0 ]; then
    log "the carried bundle is incomplete: ${missing[*]} missing or truncated (carry every part: docs/app.md)"
    return 1
  fi
  want=$(awk '$1 == "sha256" {print $2}' "$manifest")
  log "joining $(grep -c '^part ' "$manifest") carried parts (sha256 $want)"
  awk '$1 == "part" {print ".gpu_carry/" $2}' "$manifest" | xargs cat >"$WORK/bundle.tar.xz" || return 1
  echo "$want  $WORK/bundle.tar.xz" | sha256sum -c --quiet || { log "the joined bundle's sha256 differs"; return 1; }
  mkdir -p "$dest" || return 1
  timeout 180 python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2], filter="fully_trusted")' \
    "$WORK/bundle.tar.xz" "$dest" || return 1
  rm -f "$WORK/bundle.tar.xz"
  log "unpacked the carried packages into $dest/site (on PYTHONPATH) and the data into $dest/data"
  export PYTHONPATH=$dest/site${PYTHONPATH:+:$PYTHONPATH}
  CARRY_DATA=$dest/data
  PY=python3
}

find_data() {  # REFSAM3D_TEST_DATA, ../shared/data, or the carried copy; both inputs must be there
  CARRY_DATA=${CARRY_DATA:-}
  if [ -n "${REFSAM3D_TEST_DATA:-}" ]; then DATA=$REFSAM3D_TEST_DATA
  elif [ -d ../shared/data ]; then DATA=$(cd ../shared/data && pwd)
  else DATA=$CARRY_DATA
  fi
  if [ -z "$DATA" ] || [ ! -f "$DATA/totalsegmentator-example/example_ct.nii.gz" ] || [ ! -f "$DATA/msd-hippocampus/dataset.json" ]; then
    log "no real data: need totalsegmentator-example/example_ct.nii.gz and msd-hippocampus/ in REFSAM3D_TEST_DATA, ../shared/data or .gpu_carry"
    return 1
  fi
}

setup_python() {
  local t=$SECONDS how
  if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY=$GPU_CHECK_PYTHON; how="GPU_CHECK_PYTHON"
  elif [ -x .venv/bin/python ] && probe .venv/bin/python; then PY=$REPO/.venv/bin/python; how=".venv (scripts/setup.sh)"
  elif [ -f .gpu_carry/bundle.manifest ]; then install_carry || return 1; how="the machine's python3 + .gpu_carry wheels"
  else fresh_venv || return 1; how="fresh venv (pip install -r requirements.txt)"
  fi
  log "python: $PY ($how)"
  if ! probe "$PY"; then
    log "$PY cannot import the project's packages or sees no CUDA device:"
    timeout 120 "$PY" -c "$PROBE" "$DRY"
    return 1
  fi
  find_data || return 1
  log "data: $DATA; environment ready in $((SECONDS - t))s"
  timeout 120 "$PY" - "$WORK/env.json" "$how" "$((SECONDS - t))" <<'EOF'
import json, platform, re, sys
import torch
pin = re.search(r"^torch==(\S+)", open("requirements.txt").read(), re.M)
cuda = torch.cuda.is_available()
env = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "python": platform.python_version(),
       "torch": f"{torch.__version__} (CUDA {torch.version.cuda}; requirements.txt pins {pin.group(1) if pin else '?'})",
       "environment": sys.argv[2], "setup_s": int(sys.argv[3]),
       "flash_sdp_available": bool(cuda and torch.backends.cuda.is_flash_attention_available()),
       "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported())}
open(sys.argv[1], "w").write(json.dumps(env, indent=1))
print(env)
EOF
}
