#!/usr/bin/env bash
# Proves the sdist builds and installs on its own, as a user gets it:
#  1. builds it from this tree (python -m build --sdist --no-isolation; needs `build` installed)
#     and checks that the tree is as it was (no egg-info or build/ folder left in it);
#  2. checks that it holds every tracked file but CI's own and the recorded benchmark results
#     (every header and .cu/.cuh under csrc/ above all: setuptools alone takes only the sources
#     that setup.py names);
#  3. installs it into a fresh venv beside the same torch release (CPU kernels only:
#     FUSED_RNN_CUDA=0; CI's first stage builds the CUDA ones), imports it from outside any
#     source tree, checks that its kernels load and that its metadata pins that torch release;
#  4. runs a few quick tests from the unpacked sdist against the installed package.
# usage: bash tools/sdist_check.sh [WORK_DIR]   (default: a temporary folder, removed afterwards)
# PYTHON (default: python) is the interpreter with torch and build; MAX_JOBS bounds the compile.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python}
if [ $# -ge 1 ]; then
  WORK=$(mkdir -p "$1" && cd "$1" && pwd)
else
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT  # the fresh venv holds a whole torch (GBs)
fi
step() { echo "== sdist_check: $* ($SECONDS s)"; }

step "building the sdist"
before=$(git status --porcelain --ignored)
"$PY" -m build --sdist --no-isolation --outdir "$WORK/dist" .
after=$(git status --porcelain --ignored)
if [ "$before" != "$after" ]; then
  echo "building the sdist changed the source tree (git status --porcelain --ignored):"
  diff <(echo "$before") <(echo "$after") || true
  exit 1
fi
SDIST=$(ls "$WORK"/dist/fused_rnn-*.tar.gz)

step "checking its contents"
TOP=$(basename "$SDIST" .tar.gz)
missing=$(comm -23 <(git ls-files | grep -vE '^(\.ci/|\.gitignore$|benchmarks/results/)' | sort) \
                   <(tar tzf "$SDIST" | sed "s|^$TOP/||" | sort))
if [ -n "$missing" ]; then
  echo "the sdist lacks these tracked files (see MANIFEST.in):"
  echo "$missing"
  exit 1
fi

TORCH=$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')
step "a fresh venv with torch $TORCH"
VENV=$WORK/venv
rm -rf "$VENV"
"$PY" -m venv "$VENV"
# What the README asks users to install first (the build runs without isolation, with these).
"$VENV/bin/pip" install -q "torch==$TORCH" "setuptools>=77" numpy ninja pybind11 pytest
step "building and installing the sdist (CPU kernels)"
FUSED_RNN_CUDA=0 "$VENV/bin/pip" install -q --no-build-isolation "$SDIST"

step "importing it"
(cd "$WORK" && "$VENV/bin/python" - <<'EOF'
import importlib.metadata, json, os, re, sys
import torch
import fused_rnn

info = fused_rnn.build_info()
print(json.dumps(info))
assert info["kernels_loaded"], info
location = os.path.realpath(fused_rnn.__file__)
assert location.startswith(os.path.realpath(sys.prefix) + os.sep), location  # not a source tree
pin = "torch=={}.{}.*".format(*re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
requires = importlib.metadata.requires("fused_rnn")
assert pin in requires, (pin, requires)
print("installed at", os.path.dirname(fused_rnn.__file__), "requires", requires)
EOF
)

step "running quick tests from the sdist"
tar xzf "$SDIST" -C "$WORK"
# Without the sdist's own copy of the package, the tests can only import the installed one.
rm -rf "${WORK:?}/$TOP/fused_rnn"
# Seconds, not minutes: the kernels' own tests ran in CI's first stage; these show that the sdist's
# tests, helpers (cases.py, conftest.py) and pyproject settings work with what it installed.
(cd "$WORK" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$TOP/tests/test_linear.py" \
   -k "not test_matches_torch" && \
 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$TOP/tests/test_modules.py" \
   -k "float32_matches_torch or unbatched_matches_torch or against_reference_oracle")
step "done"
