#!/usr/bin/env bash
# The README's test command: set up the environment, then run the whole test suite on the CPU, in a random order
# (pytest-randomly) whose seed is printed, so that a failure that depends on the order can be replayed; the 15
# slowest tests are listed at the end, to keep the suite's time in check.
#   TEST_SEED=1234 bash scripts/test.sh     # the same order again
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
seed=${TEST_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
echo "Test order: random, seed $seed (replay it with TEST_SEED=$seed bash scripts/test.sh)"
.venv/bin/python -m pytest tests -q -rs --durations=15 -p randomly --randomly-seed="$seed" "$@"
