#!/usr/bin/env bash
# Proves CMakeLists.txt really configures and builds the operator library against the installed
# torch, then loads that library (without fused_rnn's own extension) and checks an LSTM and a
# GRU against the reference oracle.   usage: bash tools/cmake_check.sh [BUILD_DIR]
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
