#!/usr/bin/env bash
# The prepared GPU check (issue 20): on a machine with a CUDA GPU and no network, with the torch
# that is installed there, run the gpu tests and benchmarks/bench_gpu.py, each step bounded, all
# logged. It never installs anything: opdlens runs from this checkout (PYTHONPATH).
#
#   bash scripts/gpu_check.sh [LOG_DIR]     # LOG_DIR defaults to $OUT, else /tmp/opdlens-gpu-check
#
# Budget: at most ~7 minutes (pytest 180 s, the benchmark 240 s, the rest seconds). Exit status:
# non-zero when a step failed or timed out; every step still runs and the log says which.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${1:-${OUT:-/tmp/opdlens-gpu-check}}
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/gpu_check.log"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

step() {  # step NAME SECONDS CMD...: run one bounded step, log it, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
    [ "$rc" = 0 ] || status=1
}

: >"$LOG"
step "machine" 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; $PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0))'"
# The gpu tests, and the pickle reader under this torch (a .bin must read in every version).
step "gpu tests" 180 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$LOG_DIR/gpu_tests.xml" \
    tests/analysis/test_cuda.py tests/extrapolation/test_cuda.py tests/test_devices.py \
    tests/io/test_pickles.py tests/analysis/test_compare.py::test_cuda_gives_the_numbers_of_the_cpu \
    tests/analysis/test_live.py::test_on_cuda_a_model_gives_the_numbers_of_the_cpu \
    tests/test_follow.py::test_watch_on_cuda_gives_the_numbers_of_the_cpu
step "bench_gpu" 240 "$PY" benchmarks/bench_gpu.py --json "$LOG_DIR/bench_gpu.json"
echo "=== gpu_check: $([ $status = 0 ] && echo passed || echo FAILED); log in $LOG" | tee -a "$LOG"
exit $status
