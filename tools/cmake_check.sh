#!/usr/bin/env bash
# Proves CMakeLists.txt really configures and builds the operator library against the installed
# torch, then loads that library (without fused_rnn's own extension) and checks an LSTM and a
# GRU against the reference oracle.   usage: bash tools/cmake_check.sh [BUILD_DIR]
# Where nvcc and a CUDA build of torch are there, the same again with -DFUSED_RNN_CUDA=ON (one
# architecture, CMAKE_CHECK_CUDA_ARCH, default 9.0) in BUILD_DIR-cuda; CMAKE_CHECK_CUDA=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build/cmake}
PY=${PYTHON:-python}
PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
cmake -S . -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j "${MAX_JOBS:-2}"
"$PY" tools/cmake_check.py "$BUILD/libfused_rnn_ops.so"

CUDA_HOME_GUESS=${CUDA_HOME:-/usr/local/cuda}
if [ "${CMAKE_CHECK_CUDA:-1}" != 0 ] && [ -x "$CUDA_HOME_GUESS/bin/nvcc" ] && \
   "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
  ARCH=${CMAKE_CHECK_CUDA_ARCH:-9.0}
  # Both CMake's and torch's own architecture settings, or torch's CMake adds a dozen.
  cmake -S . -B "$BUILD-cuda" "${GENERATOR[@]}" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=Release \
    -DFUSED_RNN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${ARCH/./}" -DTORCH_CUDA_ARCH_LIST="$ARCH"
  cmake --build "$BUILD-cuda" -j "${MAX_JOBS:-2}"
  "$PY" tools/cmake_check.py "$BUILD-cuda/libfused_rnn_ops.so"
fi
