#!/usr/bin/env bash
# Installs a built fusedopt wheel into a fresh virtual environment with no compiler on PATH,
# imports it from outside the checkout and runs the test suite against it: the check that
# the wheel installs and works without a toolchain, on a given torch.
#
#   scripts/test_wheel.sh WHEEL [TORCH_VERSION]      (TORCH_VERSION: default 2.13.0)
#
# Environment: PYTHON (the interpreter the venv is made from, default python3; its version
# must match the wheel's tag), EXPECT_CUDA=1 (the wheel must carry the CUDA kernels; prints
# their architectures), KEEP=1 (keep the temporary folder), TESTS (the test files to run, default
# the whole suite: tests), PYTEST_ARGS (extra pytest options).
#
# Only what needs the checkout, a compiler or the test-only module is left out, each with
# its reason (see SOURCE_TREE_TESTS and the second pytest run below).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 WHEEL [TORCH_VERSION]" >&2
  exit 2
fi
WHEEL=$(realpath "$1")
TORCH_VERSION=${2:-2.13.0}
PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
[[ -f $WHEEL && $WHEEL == *.whl ]] || { echo "test_wheel: $WHEEL is not a wheel file" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fusedopt-wheel.XXXXXX")
if [[ ${KEEP:-0} == 1 ]]; then
  echo "test_wheel: keeping $WORK"
else
  trap 'rm -rf "$WORK"' EXIT
fi
say() { echo "test_wheel: $*"; }
start=$(date +%s)

# --- a PATH with no compiler -----------------------------------------------------------
# Every program on the current PATH except C/C++/CUDA compilers, as links in one folder, so
# pip, git, ldd and the rest still work while any attempt to build native code fails.
COMPILER='^((cc|c\+\+|cpp|gcc|g\+\+|clang|clang\+\+|nvcc|icc|icpc|icx|icpx|c89|c99|tcc)(-[0-9.]+)?|.*-(gcc|g\+\+|cc|c\+\+|clang|clang\+\+|cpp)(-[0-9.]+)?)$'
mkdir "$WORK/bin"
IFS=: read -r -a path_dirs <<<"$PATH"
for dir in "${path_dirs[@]}"; do
  [[ -d $dir ]] || continue
  for program in "$dir"/*; do
    name=$(basename "$program")
    [[ -x $program && ! -d $program ]] || continue
    [[ $name =~ $COMPILER ]] && continue
    [[ -e $WORK/bin/$name ]] || ln -s "$program" "$WORK/bin/$name"
  done
done
FULL_PATH=$PATH

# --- a fresh venv: torch, then the wheel with its test extras -----------------------------
"$PYTHON" -m venv "$WORK/venv"
export PATH="$WORK/venv/bin:$WORK/bin"
unset CC CXX CUDACXX CUDA_HOME CUDA_PATH PYTHONPATH
for compiler in cc c++ gcc g++ clang nvcc; do
  if command -v "$compiler" >/dev/null; then
    echo "test_wheel: $compiler is still on PATH ($(command -v "$compiler"))" >&2
    exit 1
  fi
done
say "no compiler on PATH (cc, c++, gcc, g++, clang, nvcc: not found)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --only-binary :all: "torch==$TORCH_VERSION"
# --only-binary: nothing may be built from source, the wheel's test extras included.
python -m pip install -q --only-binary :all: "fusedopt[test] @ file://$WHEEL"
say "installed $(basename "$WHEEL") with torch $(python -c 'import torch; print(torch.__version__)') ($(( $(date +%s) - start )) s)"

# --- import from outside the checkout ------------------------------------------------------
# tests/ (and the example and benchmark scripts some tests run) are copied, not the package:
# `fusedopt` can only come from the venv.
mkdir "$WORK/run"
cp -r "$REPO/tests" "$REPO/examples" "$REPO/bench" "$WORK/run/"
# pyproject.toml for pytest's settings (the markers) only: no package source is copied.
cp "$REPO/pyproject.toml" "$WORK/run/"
cd "$WORK/run"
python - "$WORK/venv" "${EXPECT_CUDA:-0}" <<'EOF'
import os, sys
import fusedopt

venv, expect_cuda = sys.argv[1], sys.argv[2] == "1"
assert os.path.realpath(fusedopt.__file__).startswith(os.path.realpath(venv)), fusedopt.__file__
info = fusedopt.info()
assert info["native_module"] == "loaded", info["native_module"]
assert info["cpu_kernels"]["built"], info["cpu_kernels"]
assert info["devices"]["cpu"]["auto"] == "cpu", info["devices"]["cpu"]
if expect_cuda:
    assert info["cuda_kernels"]["built"], info["cuda_kernels"]
try:
    import fusedopt._cuda_host  # noqa: F401
    raise AssertionError("the wheel ships fusedopt._cuda_host, a test-only module")
except ImportError:
    pass
print(f"test_wheel: fusedopt {info['version']} from {os.path.dirname(fusedopt.__file__)}")
EOF
python -m fusedopt | tee "$WORK/info.txt"
grep -q "CPU kernels   : built" "$WORK/info.txt"
if [[ ${EXPECT_CUDA:-0} == 1 ]]; then grep -q "CUDA kernels  : built" "$WORK/info.txt"; fi

# --- the test suite against the installed wheel --------------------------------------------
# Left out, as they test the checkout rather than the installed package:
SOURCE_TREE_TESTS=(
  tests/test_layering.py        # reads the package's sources beside tests/ (import layering rules)
  tests/test_native_registry.py # configures csrc/ with CMake and compiles it: needs the checkout and a compiler
  tests/test_ptxas.py           # compiles csrc/ with nvcc (skips itself without nvcc anyway)
  tests/test_gpu_check.py       # runs .ci/gpu, the CI's GPU job, from the checkout
  tests/test_compile.py         # run below, with a compiler: torch.compile's CPU code is C++ that inductor compiles
)
# fusedopt._cuda_host is not in a wheel: tests/test_cuda_host.py and the host-build half of
# tests/test_cuda_plan.py skip themselves (pytest.importorskip), as the skip summary shows.
ignores=()
for test in "${SOURCE_TREE_TESTS[@]}"; do ignores+=("--ignore=$test"); done
status=0
# shellcheck disable=SC2086
python -m pytest ${TESTS:-tests} -q -rs -p no:cacheprovider "${ignores[@]}" ${PYTEST_ARGS:-} || status=$?
say "${TESTS:-tests} without a compiler: exit status $status ($(( $(date +%s) - start )) s)"
if [[ ${TESTS:-tests} != tests ]]; then
  say "torch $TORCH_VERSION, $(basename "$WHEEL"), ${TESTS}: $([[ $status -eq 0 ]] && echo PASSED || echo FAILED)"
  exit "$status"
fi
# torch.compile needs a C++ compiler for inductor's CPU code whatever the optimizer: the
# same installed wheel, with the original PATH.
compile_status=0
# shellcheck disable=SC2086
PATH="$WORK/venv/bin:$FULL_PATH" python -m pytest tests/test_compile.py -q -rs -p no:cacheprovider ${PYTEST_ARGS:-} \
  || compile_status=$?
say "tests/test_compile.py (with a compiler, for inductor): exit status $compile_status ($(( $(date +%s) - start )) s)"
say "torch $TORCH_VERSION, $(basename "$WHEEL"): $([[ $status -eq 0 && $compile_status -eq 0 ]] && echo PASSED || echo FAILED)"
[[ $status -eq 0 && $compile_status -eq 0 ]]
