#!/usr/bin/env bash
# One run on a bare GPU machine (no network): build, all tests, compute-sanitizer, benchmarks.
# Each stage runs under `timeout`; the log and a results JSON are written into the
# output folder as the run goes, so a cut-off run still leaves what it did.
#   usage: bash tools/gpu_check.sh OUT_DIR [GIT_COMMIT]
# Run with the device tool: bash tools/gpu_check.sh $OUT <commit>
# GPU_CHECK_STAGES="build tests ..." runs only the stages named (default: the DEFAULT_STAGES
# below, an estimated 8 minutes with the machine's start; every other stage only when named).
set -u
OUT=${1:?usage: gpu_check.sh OUT_DIR [GIT_COMMIT]}
COMMIT=${2:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
PY=${PYTHON:-python3}
# $OUT gets only what is worth keeping (the device tool brings back at most 8 files): the log and
# the results JSON, the JSON of the cluster, mma, persistent, auto-limits, graphed and quick
# benchmark runs: 8 (the stages run only when named add theirs instead of some of them). Scratch (junit, stage list) stays in $WORK.
WORK=$(mktemp -d)
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
STAGES="$WORK/stages.txt"
: > "$LOG"; : > "$STAGES"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

DEFAULT_STAGES="environment build toolchain persistent_smoke cluster_smoke mma_smoke tests memcheck racecheck
  memcheck_cluster racecheck_cluster memcheck_mma racecheck_mma memcheck_graphs benchmark_stepwise_graphs
  benchmark_persistent benchmark_auto_limits benchmark_cluster cluster_backtrace"
DEFAULT_STAGES=$(echo $DEFAULT_STAGES)  # one line

stage() {  # stage NAME SECONDS COMMAND...: run, log, record "NAME rc seconds"
  local name=$1 limit=$2; shift 2
  if [[ " ${GPU_CHECK_STAGES:-$DEFAULT_STAGES} " != *" $name "* ]]; then
    return 0
  fi
  local start=$SECONDS
  echo "===== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "===== $name: rc=$rc in $((SECONDS - start))s" | tee -a "$LOG"
  echo "$name $rc $((SECONDS - start))" >> "$STAGES"
  "$PY" tools/gpu_check_report.py "$OUT" "$WORK" "$COMMIT" >> "$LOG" 2>&1
  return $rc
}

PARALLEL=()
"$PY" -c "import xdist" 2>/dev/null && PARALLEL=(-n 8)
# A test that hangs (a kernel stuck at a barrier) ends its worker, not the whole stage.
"$PY" -c "import pytest_timeout" 2>/dev/null && PARALLEL+=(--timeout 90)

stage environment 30 nvidia-smi
stage build 150 "$PY" -m pip install --no-build-isolation --no-deps -v -e . || exit 1
# Which C++ runtime the extension links and the process loads (argument checks that streamed
# numbers crashed here: see csrc/include/fused_rnn/check_message.h).
stage toolchain 20 bash -c "g++ --version | head -1; ldd fused_rnn/_C*.so | grep -E 'stdc|gcc_s|gomp'; \
  $PY -c \"import torch, fused_rnn; print(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'stdc++' in l or 'gcc_s' in l}))\""
# The persistent kernels' first contact, alone and short: a kernel that hangs at a grid barrier
# costs this stage's limit, not the test stage's, and the later stages then leave it out.
PERSISTENT_OK=1; CLUSTER_OK=1; MMA_OK=1
stage persistent_smoke 60 "$PY" tools/persistent_smoke.py grid || PERSISTENT_OK=0
# The experimental one-cluster forward (FUSED_RNN_PERSISTENT_CLUSTER=1), likewise alone first.
# (PYTHONFAULTHANDLER: at e2603bb its results were right but the process aborted at exit.)
stage cluster_smoke 60 env PYTHONFAULTHANDLER=1 "$PY" tools/persistent_smoke.py cluster || CLUSTER_OK=0
# The tensor-core products (the default for half types), likewise.
stage mma_smoke 60 "$PY" tools/persistent_smoke.py mma || MMA_OK=0
DESELECT=(); SANITIZER_ARGS=()
if [ $PERSISTENT_OK = 0 ]; then
  DESELECT=(-k "not persistent"); SANITIZER_ARGS=(--stepwise-only); CLUSTER_OK=0; MMA_OK=0
  echo "===== persistent smoke failed: later stages leave the persistent algorithm out" | tee -a "$LOG"
else
  LEAVE_OUT=""  # a pytest -k expression
  [ $CLUSTER_OK = 0 ] && LEAVE_OUT="not cluster"
  # Tensor cores are the default for half types: without them the later stages run FFMA.
  [ $MMA_OK = 0 ] && LEAVE_OUT="${LEAVE_OUT:+$LEAVE_OUT and }not tensor_cores" && export FUSED_RNN_PERSISTENT_MMA=0
  if [ -n "$LEAVE_OUT" ]; then
    DESELECT=(-k "$LEAVE_OUT")
    echo "===== experimental smoke failed: later stages run -k \"$LEAVE_OUT\"" | tee -a "$LOG"
  fi
fi
# Every test (the CUDA ones and, on this machine's torch, the CPU ones too), but test_cpu_isa:
# CPU kernels only, in child processes (CI runs it); under 8 workers here it ran past this
# stage's limit at 6ea377d.
stage tests 180 "$PY" -m pytest tests -q "${PARALLEL[@]}" "${DESELECT[@]}" --ignore=tests/test_cpu_isa.py \
  --junitxml="$WORK/junit.xml" -p no:cacheprovider
stage memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" tools/sanitizer_workload.py "${SANITIZER_ARGS[@]}"
stage racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 9 "$PY" tools/sanitizer_workload.py "${SANITIZER_ARGS[@]}"
[ $CLUSTER_OK = 1 ] && stage memcheck_cluster 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$PY" tools/sanitizer_workload.py --cluster
[ $CLUSTER_OK = 1 ] && stage racecheck_cluster 60 compute-sanitizer --tool racecheck --error-exitcode 9 \
  "$PY" tools/sanitizer_workload.py --cluster
[ $MMA_OK = 1 ] && stage memcheck_mma 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$PY" tools/sanitizer_workload.py --mma
[ $MMA_OK = 1 ] && stage racecheck_mma 60 compute-sanitizer --tool racecheck --error-exitcode 9 \
  "$PY" tools/sanitizer_workload.py --mma
# The stepwise loops replayed from graphs captured inside the ops (half types and, with
# --graphs, float32).
stage memcheck_graphs 60 compute-sanitizer --tool memcheck \
  --error-exitcode 9 "$PY" tools/sanitizer_workload.py --stepwise-only --graphs
# Most wanted first (a run cut short keeps what it did): where a persistent step's time goes
# (issue 6), tensor cores against FFMA, the stepwise loop without launch overhead (issue 5), the
# two algorithms and auto where the persistent kernel is meant to win, then where it stops paying,
# the experimental cluster forward, every cell on `mid` with peak memory (issue 5).
# Stall reasons and memory traffic of one long_tiny forward, grid kernel then cluster kernel.
NCU=(ncu --clock-control none -k regex:forward_kernel --launch-skip 1 --launch-count 1 --section SpeedOfLight
     --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats)
[ $PERSISTENT_OK = 1 ] && stage profile_persistent 90 "${NCU[@]}" "$PY" tools/profile_persistent.py
# bf16 with the persistent kernels' FFMA products, against their default tensor cores
# (benchmark_persistent) and cuDNN.
[ $PERSISTENT_OK = 1 ] && stage benchmark_ffma_half 60 env FUSED_RNN_PERSISTENT_MMA=0 "$PY" -m benchmarks \
  --device cuda --cells lstm,gru --workloads small_batch,mid,long_tiny,deepbench_1024 --dtypes bf16 \
  --contenders fused_persistent,torch.nn --no-plot --out "$OUT"
# The stepwise loop without launch overhead (CUDA graphs) where it races cuDNN (issue 5).
stage benchmark_graphed 60 "$PY" -m benchmarks --device cuda --cells lstm,gru \
  --workloads mid,deepbench_1024,big_h,large_batch --dtypes fp32,bf16 \
  --contenders fused_stepwise,fused_graphed,torch.nn --no-plot --out "$OUT"
# The stepwise loop replayed from graphs captured inside the ops (fused_stepwise: the default
# for half types; float32's too here, FUSED_RNN_STEPWISE_GRAPHS=all, still opt-in), launched step
# by step (fused_stepwise_eager), and replayed from graphs of the whole module (fused_graphed),
# against cuDNN.
stage benchmark_stepwise_graphs 75 env FUSED_RNN_STEPWISE_GRAPHS=all "$PY" -m benchmarks --device cuda \
  --cells lstm,gru --workloads mid,deepbench_1024,big_h,large_batch --dtypes fp32,bf16 \
  --contenders fused_stepwise,fused_stepwise_eager,fused_graphed,torch.nn --no-plot --out "$OUT"
# The same stepwise loop with ATen's GEMM instead of cuBLASLt (cuda/step_gemm_cublaslt.h).
stage benchmark_step_gemm_aten 30 env FUSED_RNN_STEP_GEMM=aten "$PY" -m benchmarks --device cuda \
  --cells lstm,gru --workloads mid,deepbench_1024,large_batch --dtypes bf16 \
  --contenders fused_stepwise,torch.nn --no-plot --out "$OUT"
# Both algorithms and auto for LSTM and GRU from small_batch to large_batch: auto's limits.
[ $PERSISTENT_OK = 1 ] && stage benchmark_algorithms 90 "$PY" -m benchmarks --device cuda --cells lstm,gru \
  --workloads small_batch,mid,long_tiny,deepbench_1024,large_batch --dtypes fp32,bf16 \
  --contenders fused,fused_stepwise,fused_persistent,torch.nn --no-plot --out "$OUT"
[ $PERSISTENT_OK = 1 ] && stage benchmark_persistent 90 "$PY" -m benchmarks --device cuda --cells lstm,gru,rnn_tanh,peephole_lstm \
  --workloads small_batch,mid,long_tiny --dtypes fp32,bf16 \
  --contenders fused,fused_stepwise,fused_persistent,torch.nn --no-plot --out "$OUT"
# Where the persistent kernel stops paying (auto's limit in csrc/sequence/persistent_loop.h).
[ $PERSISTENT_OK = 1 ] && stage benchmark_auto_limits 60 "$PY" -m benchmarks --device cuda --cells lstm,gru \
  --workloads deepbench_1024,large_batch,big_h --dtypes fp32,bf16 \
  --contenders fused,fused_stepwise,fused_persistent,torch.nn --no-plot --out "$OUT"
[ $CLUSTER_OK = 1 ] && stage benchmark_cluster 60 env FUSED_RNN_PERSISTENT_CLUSTER=require "$PY" -m benchmarks \
  --device cuda --cells lstm,gru,rnn_tanh --workloads small_batch,long_tiny --dtypes fp32,bf16 \
  --modes inference --contenders fused_persistent,torch.nn --no-plot --out "$OUT"
[ $CLUSTER_OK = 1 ] && stage profile_cluster 90 env FUSED_RNN_PERSISTENT_CLUSTER=require "${NCU[@]}" \
  "$PY" tools/profile_persistent.py
# The floor of a persistent step: one grid barrier (by blocks) or cluster barrier (by size).
stage barrier_bench 40 bash -c "nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 \
  -o $WORK/barrier_bench tools/barrier_bench.cu && $WORK/barrier_bench"
# Every cell on `mid`, with peak memory (issue 5).
stage benchmark_quick 45 "$PY" -m benchmarks --quick --device cuda --no-plot --out "$OUT"
stage benchmark_pipeline 30 "$PY" -m benchmarks.pipeline --device cuda --json "$OUT/pipeline.json"
stage benchmark_workloads 90 "$PY" -m benchmarks --device cuda --cells lstm,gru \
  --workloads small_batch,deepbench_1024,big_h,long_tiny,large_batch --dtypes fp32,bf16 \
  --contenders fused,torch.nn --out "$OUT"
# Where the cluster smoke test's process aborted ("terminate called without an active
# exception" at e2603bb and c3d4ece): its native stack, printed at SIGABRT by a preloaded shim
# (tools/abort_backtrace.cpp: the machine has no gdb), frames without a symbol name resolved
# with addr2line.
[ $CLUSTER_OK = 0 ] && stage cluster_backtrace 60 bash -c "g++ -O1 -g -shared -fPIC \
  tools/abort_backtrace.cpp -o $WORK/abort_backtrace.so -ldl && \
  LD_PRELOAD=$WORK/abort_backtrace.so $PY tools/persistent_smoke.py cluster 2> $WORK/abort.txt; \
  echo rc=\$?; cat $WORK/abort.txt; grep -o '^/[^(]*(+0x[0-9a-f]*)' $WORK/abort.txt | sed 's/(+/ /; s/)//' | \
  while read lib offset; do echo \"\$lib \$offset: \$(addr2line -f -C -e \$lib \$offset | head -1)\"; done"
tail -n 60 "$LOG" | grep -E "=====|passed|failed|ERROR SUMMARY|RACECHECK SUMMARY" || true
