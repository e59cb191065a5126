#!/usr/bin/env bash
# Prepare .gpu_carry/ (git-ignored) for benchmarks/gpu_check.sh on a CUDA machine that reaches no package registry
# (the device tool's machines: their python3 holds torch with CUDA and many packages, nothing can be installed).
# Bundles, as one tar.xz split into parts of at most GPU_CARRY_PART_MB MiB (default 28: a part plus the ~30 MiB
# working tree stays under the tool's 64 MiB per call), with a manifest (part sizes, sha256 of the whole):
#   - site/: the packages of benchmarks/gpu_carry_packages.txt (requirements.txt's packages, and their dependencies,
#     that the stages import and such a machine's python3 lacks) installed for CPython 3.12 manylinux x86-64 with
#     pip --target --no-deps --only-binary, at the versions this project's .venv holds (those its tests pass with);
#   - data/: the real inputs of the stages (the abdominal CT, 8 hippocampus cases with a dataset.json of them).
# xz of the installed files is ~40 % smaller than the wheels (fewer parts to carry) and needs no pip on the machine.
# Run it here, where PyPI answers (minutes: xz on all cores); then carry the parts (docs/app.md, "GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MB=${GPU_CARRY_PART_MB:-28}
PIP=${GPU_CARRY_PIP:-.venv/bin/pip}
DATA=${REFSAM3D_TEST_DATA:-../shared/data}
OUTDIR=.gpu_carry
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_carry.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

mapfile -t NAMES < <(sed -e 's/#.*//' -e '/^\s*$/d' benchmarks/gpu_carry_packages.txt)
FREEZE=$("$PIP" freeze 2>/dev/null)
SPECS=()
for name in "${NAMES[@]}"; do
  pattern=${name//[-_.]/[-_.]}
  spec=$(echo "$FREEZE" | grep -i -E "^${pattern}==" || true)
  [ -n "$spec" ] || { echo "gpu_carry: $name is not installed in the venv of $PIP" >&2; exit 1; }
  SPECS+=("$spec")
done
echo "gpu_carry: installing ${#SPECS[@]} packages for CPython 3.12 manylinux x86-64: ${SPECS[*]}"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
WHEELS=$STAGE/wheels
for spec in "${SPECS[@]}"; do  # a binary wheel for the machine; else (sdist only) a pure-Python wheel built here
  "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d "$WHEELS" "$spec" 2>/dev/null && continue
  built=$(mktemp -d "$STAGE/built.XXXXXX")
  "$PIP" wheel -q --no-deps -w "$built" "$spec"
  for w in "$built"/*.whl; do
    case $w in
      *-none-any.whl) mv "$w" "$WHEELS/" ;;
      *) echo "gpu_carry: $spec has no CPython 3.12 wheel and builds a platform wheel here ($w)" >&2; exit 1 ;;
    esac
  done
done
"$PIP" install -q --no-deps --no-compile --no-index --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" --target "$STAGE/bundle/site" "$WHEELS"/*.whl
rm -rf "$STAGE/bundle/site/bin"

ct=$DATA/totalsegmentator-example/example_ct.nii.gz
hippo=$DATA/msd-hippocampus
[ -f "$ct" ] && [ -f "$hippo/dataset.json" ] || { echo "gpu_carry: no $ct or $hippo/dataset.json" >&2; exit 1; }
mkdir -p "$STAGE/bundle/data/totalsegmentator-example" "$STAGE/bundle/data/msd-hippocampus/imagesTr" \
  "$STAGE/bundle/data/msd-hippocampus/labelsTr"
cp "$ct" "$STAGE/bundle/data/totalsegmentator-example/"
python3 - "$hippo" "$STAGE/bundle/data/msd-hippocampus" <<'EOF'
import json, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads((src / "dataset.json").read_text())
meta["training"] = meta["training"][:8]
meta["numTraining"], meta["test"] = 8, []
for rec in meta["training"]:
    for key in ("image", "label"):
        shutil.copy(src / rec[key], dst / rec[key])
(dst / "dataset.json").write_text(json.dumps(meta, indent=1))
EOF

echo "gpu_carry: $(du -sh "$STAGE/bundle" | cut -f1) to compress (xz ${GPU_CARRY_XZ:--6}, all cores)"
tar -cf - -C "$STAGE/bundle" . | xz -T0 "${GPU_CARRY_XZ:--6}" >"$STAGE/bundle.tar.xz"
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
split -b "${PART_MB}M" -d -a 2 "$STAGE/bundle.tar.xz" "$OUTDIR/bundle.tar.xz.part-"
{
  echo "sha256 $(sha256sum "$STAGE/bundle.tar.xz" | cut -d' ' -f1)"
  for f in "$OUTDIR"/bundle.tar.xz.part-*; do echo "part $(basename "$f") $(stat -c %s "$f")"; done
} >"$OUTDIR/bundle.manifest"
parts=("$OUTDIR"/bundle.tar.xz.part-*)
echo "gpu_carry: $(du -sh "$STAGE/bundle.tar.xz" | cut -f1) in ${#parts[@]} parts of <= ${PART_MB} MiB in $OUTDIR/:"
cat "$OUTDIR/bundle.manifest"
echo "device tool: one run per part, each at once after the last (a machine stays warm 30 s); the last one checks:"
last=$((${#parts[@]} - 1))
for i in "${!parts[@]}"; do
  if [ "$i" -lt "$last" ]; then
    echo "  run carry=[\"${parts[$i]}\"] command=\"ls -l .gpu_carry\" timeout_s=120"
  else
    echo "  run carry=[\"${parts[$i]}\", \"$OUTDIR/bundle.manifest\"] command=\"bash benchmarks/gpu_check.sh\" timeout_s=540"
  fi
done
