#!/usr/bin/env bash
# One-shot GPU check of RefSAM3D Label (issue 24, target 4), sized for one 8-minute run on a CUDA machine:
#   CUDA tests -> server benchmark (vit_b, whole abdominal CT) -> whole-CT model path fp32 / bf16 in-process
#   -> training steps/s (small, vit_b) -> bf16 + torch.compile; then ONE table (metric | value | target | status),
#   also as JSON in $WORK/gpu_check.json and, when OUT is set (the device tool), $OUT/gpu_check.json + the log.
# Every stage has its own timeout (capped by what is left of GPU_CHECK_BUDGET_S); a stage that fails, hangs or
# leaves no number is a FAILED row and the script exits 1.  No CUDA device: it says so and exits 2 at once.
#
#   bash benchmarks/gpu_check.sh                 # on a CUDA machine (device tool: run, timeout_s 540)
#   bash benchmarks/gpu_check.sh --cpu-smoke     # the same stages on the CPU, tiny settings (GPU_CHECK_DRY_RUN=1)
#
# Python, in this order: $GPU_CHECK_PYTHON; .venv (scripts/setup.sh) when it has torch with CUDA; the machine's
# python3 plus the wheels and data carried in .gpu_carry/ (benchmarks/gpu_carry.sh; for machines with no registry,
# like the device tool); else a fresh venv from requirements.txt (pip install -r, nothing else), timed.
# Environment: GPU_CHECK_BUDGET_S (450), GPU_CHECK_WORK (a new /tmp folder), GPU_CHECK_STAGES (all, in order:
# cuda_tests server whole_ct train_small train_vit_b compile), REFSAM3D_TEST_DATA (default ../shared/data).
set -uo pipefail  # not -e: a failed stage is recorded and the others still run; the exit status says it
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
DRY=${GPU_CHECK_DRY_RUN:-0}
[ "${1:-}" = "--cpu-smoke" ] && DRY=1
BUDGET=${GPU_CHECK_BUDGET_S:-450}
[ "$DRY" = 1 ] && BUDGET=${GPU_CHECK_BUDGET_S:-900}  # the CPU is slower, and the dry run has no device-time limit
RESERVE=10  # seconds kept for the table
ALL_STAGES="cuda_tests server whole_ct train_small train_vit_b compile"
STAGES=${GPU_CHECK_STAGES:-$ALL_STAGES}
T0=$SECONDS
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$WORK" || exit 2
: >"$WORK/stages.tsv"
LOG=$WORK/gpu_check.log
exec > >(tee -a "$LOG") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

log() { printf '[%s UTC +%4ss] %s\n' "$(date -u +%H:%M:%S)" "$((SECONDS - T0))" "$*"; }
die() { log "FATAL: $*"; finish 2; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/stages.tsv"; }

finish() {  # the table (stdlib Python: works whatever the environment), JSON copies, the exit status
  local rc=$1 out=() report_rc
  [ -n "${OUT:-}" ] && mkdir -p "$OUT" && out=(--json "$OUT/gpu_check.json")
  [ "$DRY" = 1 ] && out+=(--dry-run)
  log "report ($WORK)"
  python3 benchmarks/gpu_check_report.py "$WORK" --json "$WORK/gpu_check.json" "${out[@]}"
  report_rc=$?
  [ "$rc" = 0 ] && rc=$report_rc
  log "done in $((SECONDS - T0))s, exit status $rc"
  [ -n "${OUT:-}" ] && cp "$LOG" "$OUT/gpu_check.log"
  exit "$rc"
}

# run_stage NAME TIMEOUT_S CMD...: CMD under its own timeout (SIGINT first, so Python's cleanup stops the servers
# it started; SIGKILL 15 s later), capped by the budget left; output shown and kept in $WORK/NAME.log.
run_stage() {
  local name=$1 limit=$2 left rc t
  shift 2
  case " $STAGES " in *" $name "*) ;; *) record "$name" "NOT RUN" 0 "not in GPU_CHECK_STAGES"; return 1 ;; esac
  [ "$DRY" = 1 ] && limit=$((limit * 3))  # stage timeouts are sized for the GPU; the CPU is slower
  left=$((BUDGET - (SECONDS - T0) - RESERVE))
  if [ "$left" -lt 20 ]; then
    log "== stage $name NOT RUN: the ${BUDGET}s budget is spent"
    record "$name" "NOT RUN" 0 "budget of ${BUDGET}s spent"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "== stage $name (timeout ${limit}s): $*"
  t=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) record "$name" ok $((SECONDS - t)) "" ;;
    124) record "$name" TIMEOUT $((SECONDS - t)) "killed after ${limit}s" ;;
    *) record "$name" FAILED $((SECONDS - t)) "exit status $rc (see $WORK/$name.log)" ;;
  esac
  log "== stage $name: exit status $rc after $((SECONDS - t))s"
  return "$rc"
}

# ---------------------------------------------------------------- 0. a CUDA device, or stop now
if [ "$DRY" = 1 ]; then
  log "DRY RUN on the CPU (--cpu-smoke): tiny settings, proves the plumbing only; these are NOT GPU numbers"
else
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: this is not a CUDA machine (CPU plumbing check: --cpu-smoke)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || die "nvidia-smi sees no CUDA device"
fi
log "work folder $WORK; budget ${BUDGET}s; stages: $STAGES"

# ---------------------------------------------------------------- 1. Python with the project's requirements
# shellcheck source=benchmarks/gpu_check_env.sh
source benchmarks/gpu_check_env.sh
setup_python || die "no usable Python environment (see above)"
export REFSAM3D_TEST_DATA=$DATA
DEVICE=cuda
[ "$DRY" = 1 ] && DEVICE=cpu
log "random SAM ViT-B checkpoint (official format; speed as the real one) -> $WORK"
SAM=$(timeout 120 "$PY" -c "import sys; sys.path[:0] = ['benchmarks', 'tests']
from pathlib import Path; from bench_server import random_sam_checkpoint
print(random_sam_checkpoint(Path(sys.argv[1])))" "$WORK" 2>"$WORK/sam.log" | tail -1)
[ -s "$SAM" ] || die "could not write the random SAM checkpoint: $(tail -5 "$WORK/sam.log")"

# ---------------------------------------------------------------- 2. the stages
mapfile -t CUDA_TESTS < <(grep -l "torch.cuda.is_available()" tests/test_*.py)
[ "${#CUDA_TESTS[@]}" -gt 0 ] || die "no CUDA tests found (grep torch.cuda.is_available() tests/test_*.py)"
run_stage cuda_tests 120 "$PY" -m pytest "${CUDA_TESTS[@]}" -q -rs -p no:randomly -p no:cacheprovider \
  --junitxml="$WORK/cuda_tests.xml"

if [ "$DRY" = 1 ]; then
  SERVER_ARGS=(--presets small --repeats 1 --target-spacing 6 --roi-size 32)
  CT_ARGS=(--preset small --spacing 6 --roi 32 --repeats 1)
  COMPILE_ARGS=(--compile-backend eager)
  TRAIN_ARGS=(--iterations 3 --roi 32 --crop 32 --threads 2)
else
  SERVER_ARGS=(--presets vit_b --repeats 3)
  CT_ARGS=(--preset vit_b --repeats 3)
  COMPILE_ARGS=()
  TRAIN_ARGS=(--iterations 40 --threads 0)
fi
run_stage server 150 "$PY" benchmarks/bench_server.py "${SERVER_ARGS[@]}" --sam-checkpoint "$SAM" \
  --json "$WORK/server.json"
run_stage whole_ct 100 "$PY" benchmarks/bench_whole_ct.py --device "$DEVICE" --modes fp32 bf16 "${CT_ARGS[@]}" \
  --sam-checkpoint "$SAM" --json "$WORK/whole_ct.json"
for preset in small vit_b; do
  SAM_ARG=()
  [ "$preset" = vit_b ] && SAM_ARG=(--sam-checkpoint "$SAM")
  run_stage "train_$preset" 90 "$PY" scripts/train.py --data "$DATA/msd-hippocampus" --label-set msd_hippocampus \
    --preset "$preset" "${SAM_ARG[@]}" --max-cases 8 --val-split 0 --epochs 1000 --device "$DEVICE" \
    --no-progress --output "$WORK/train_$preset/refsam3d_$preset.pt" "${TRAIN_ARGS[@]}"
done
run_stage compile 150 "$PY" benchmarks/bench_whole_ct.py --device "$DEVICE" --modes bf16-compile "${CT_ARGS[@]}" \
  "${COMPILE_ARGS[@]}" --sam-checkpoint "$SAM" --json "$WORK/whole_ct_compile.json"

finish 0
