#!/usr/bin/env bash
# One-shot GPU-machine check: build the extension (CUDA kernels), run the op tests and the
# kernel benchmark, copy logs/results into $OUT. torch (with CUDA) must already be installed;
# the machine may be offline, hence --no-deps.   Usage: OUT=/some/dir bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

{ nvidia-smi || true; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# Build only for the GPU present (faster compile).
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$($PY -c 'import torch; c = torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")' 2>/dev/null || echo "9.0")
  export TORCH_CUDA_ARCH_LIST
fi
export MAX_JOBS=${MAX_JOBS:-8}
log "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
$PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
rc_build=$?
log "build rc=$rc_build"
$PY -c 'import fawkes_fast.ops as o; print("HAS_EXTENSION", o.HAS_EXTENSION, "CUDA kernels", o._CUDA_KERNELS)' 2>&1 | tee -a "$OUT/summary.txt"

log "pytest"
$PY -m pytest -q -rs tests/test_ssim.py tests/test_tanh_adam.py tests/test_ops_errors.py > "$OUT/pytest.log" 2>&1
rc_test=$?
tail -n 5 "$OUT/pytest.log" | tee -a "$OUT/summary.txt"
log "pytest rc=$rc_test"

log "bench"
$PY bench/bench_kernels.py --quick --out "$OUT/RESULTS-kernels.md" > "$OUT/bench.log" 2>&1
rc_bench=$?
log "bench rc=$rc_bench"
cat "$OUT/RESULTS-kernels.md" 2>/dev/null
exit $(( rc_build || rc_test || rc_bench ))
