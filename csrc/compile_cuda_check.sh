#!/usr/bin/env bash
# Compile-only check of every csrc/**/*.cu with nvcc (no GPU needed). Usage: csrc/compile_cuda_check.sh
# Env: NVCC (default: nvcc on PATH or $CUDA_HOME/bin/nvcc), PYTHON (default: python),
#      CUDA_CHECK_ARCHS (default: "80 90").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
NVCC=${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}
TORCH_DIR=$($PY -c 'import os, torch; print(os.path.dirname(torch.__file__))')
PY_INC=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
ABI=$($PY -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
# A CPU-only torch wheel ships the c10/cuda headers but not the generated
# c10/cuda/impl/cuda_cmake_macros.h: supply an empty stand-in (only for this compile check).
SHIM=()
if [ ! -f "$TORCH_DIR/include/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  SHIM_DIR=$(mktemp -d); trap 'rm -rf "$SHIM_DIR"' EXIT
  mkdir -p "$SHIM_DIR/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$SHIM_DIR/c10/cuda/impl/cuda_cmake_macros.h"
  SHIM=(-I"$SHIM_DIR")
fi
GENCODE=()
for a in ${CUDA_CHECK_ARCHS:-80 90}; do GENCODE+=(-gencode "arch=compute_${a},code=sm_${a}"); done
status=0
while IFS= read -r -d '' f; do
  echo "nvcc -c $f"
  if ! "$NVCC" -c -std=c++20 "${GENCODE[@]}" -O3 --expt-relaxed-constexpr \
      -I"$TORCH_DIR/include" -I"$TORCH_DIR/include/torch/csrc/api/include" -I"$PY_INC" -Icsrc "${SHIM[@]}" \
      -D_GLIBCXX_USE_CXX11_ABI="$ABI" -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H \
      -Xcompiler -fPIC -o /dev/null "$f"; then
    echo "FAILED: $f"; status=1
  fi
done < <(find csrc -name '*.cu' -print0 | sort -z)
[ $status -eq 0 ] && echo "all .cu files compile"
exit $status
