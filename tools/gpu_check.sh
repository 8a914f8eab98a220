#!/usr/bin/env bash
# One run on a bare GPU machine (no network): build, CUDA tests, compute-sanitizer, quick
# benchmark. Each stage runs under `timeout`; the log and a results JSON are written into the
# output folder as the run goes, so a cut-off run still leaves what it did.
#   usage: bash tools/gpu_check.sh OUT_DIR [GIT_COMMIT]
set -u
OUT=${1:?usage: gpu_check.sh OUT_DIR [GIT_COMMIT]}
COMMIT=${2:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
STAGES="$OUT/stages.txt"
: > "$LOG"; : > "$STAGES"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

stage() {  # stage NAME SECONDS COMMAND...: run, log, record "NAME rc seconds"
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "===== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "===== $name: rc=$rc in $((SECONDS - start))s" | tee -a "$LOG"
  echo "$name $rc $((SECONDS - start))" >> "$STAGES"
  "$PY" tools/gpu_check_report.py "$OUT" "$COMMIT" >> "$LOG" 2>&1
  return $rc
}

# The CPU-only tests ran in CI already: here every test with a CUDA parameter or in test_cuda.py.
PARALLEL=()
"$PY" -c "import xdist" 2>/dev/null && PARALLEL=(-n 6)

stage environment 30 nvidia-smi
stage build 200 "$PY" -m pip install --no-build-isolation --no-deps -v -e . || exit 1
stage tests 150 "$PY" -m pytest tests -q -k cuda "${PARALLEL[@]}" --junitxml="$OUT/junit.xml" -p no:cacheprovider
stage memcheck 80 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" tools/sanitizer_workload.py
stage racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 9 "$PY" tools/sanitizer_workload.py
stage benchmark 90 "$PY" -m benchmarks --quick --device cuda --out "$OUT"
tail -n 40 "$LOG" | grep -E "=====|passed|failed|ERROR SUMMARY" || true
