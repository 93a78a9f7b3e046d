#!/usr/bin/env bash
# Issue #13's GPU measurements in one run (about 5 minutes on an H200):
#   1. build the extension for the GPU present;
#   2. the op tests' CUDA cases (opcheck, gradcheck, the references, skimage, pytorch-msssim, Adam),
#      which are the only check of the CUDA kernels' results;
#   3. SSIM forward+backward at 64x3x224^2 (ours, pytorch-msssim, fused-ssim if importable) and
#      tanh-Adam at 128x3x150^2, each against its memory floor (bench/bench_kernels.py --floors);
#   4. the engine step at 128 faces with dlib, fp32 and reduced precision (bf16, fp16), against
#      the peer's eager and torch.compile steps, and the feature parity of the reduced-precision
#      dlib on 100 LFW chips (bench/bench_step.py);
#   5. whole photos end to end (low/mid/high, one face) against the peer, at the honest face budget:
#      the per-GPU photo time that the Ray cost model (bench/ray_bench.py --gpu-photos-per-s) needs;
#   6. faces of different sizes in one padded batch against a batch per size (bench/bench_mixed_sizes.py).
# Every step runs even when one fails; the script then exits non-zero and names the failures.
# Results: $OUT/kernels.json, $OUT/step.json, $OUT/cloak.md, $OUT/mixed.json, $OUT/summary.md, $OUT/gpu_check.log.
#
# Usage: OUT=/some/dir bench/gpu_check.sh [--cpu-smoke]
#   --cpu-smoke  the same steps on the CPU at tiny sizes, with the extension already installed
#                (no build, no CUDA tests, no compiled peer): checks this script without a GPU.
# The GPU machine is offline; the caller may carry .whl/ (wheels, e.g. pytorch-msssim, installed
# with --no-index), .devpkgs/ (face_recognition_models) and .devdata/shared/ (peer/ + data/lfw/).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
OUT=${OUT:-$PWD/out/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG=$OUT/gpu_check.log
: > "$LOG"
FAILED=()
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
step() {  # name, seconds, command...: run it with a time limit, log it, remember a failure
  local name=$1 limit=$2
  shift 2
  log "== $name"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  log "== $name rc=$rc"
  [ $rc -eq 0 ] || FAILED+=("$name (rc $rc)")
}
export PYTHONUNBUFFERED=1

if ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >> "$LOG" 2>&1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
[ -d .devpkgs ] && export PYTHONPATH=$PWD/.devpkgs:${PYTHONPATH:-}
SH=$PWD/../shared
[ -d .devdata/shared ] && SH=$PWD/.devdata/shared
export FAWKES_FAST_SHARED=$SH FAWKES_FAST_CACHE=${FAWKES_FAST_CACHE:-/tmp/ffcache}

if [ $SMOKE = 1 ]; then
  DEV=cpu
  KERNEL_ARGS=(--ssim-shape 2 3 32 32 --adam-shape 2 3 16 16)
  STEP_ARGS=(--faces 2 --iters 2 --photos 2 --parity 4 --precisions bf16)
  CLOAK_ARGS=(--batch 1 --photos 1 --iters 1)
  MIXED_ARGS=(--photos 3 --steps 3)
else
  DEV=cuda
  KERNEL_ARGS=()
  STEP_ARGS=(--faces 128 --iters 20 --photos 16 --parity 100 --precisions bf16 fp16 --compile-peer)
  CLOAK_ARGS=(--batch 1 8 --photos 3 --iters 3)
  MIXED_ARGS=(--photos 32)
  { nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'; } >> "$LOG" 2>&1
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; c = torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")')}
  export TORCH_CUDA_ARCH_LIST MAX_JOBS=${MAX_JOBS:-16}
  # PEP 660 editable build with the setuptools already there (offline: no build isolation); if
  # that fails, build in place (the shipped models are then read from models/)
  step build 300 bash -c "$PY -m pip install --no-build-isolation --no-deps --use-pep517 -e . || {
    echo 'editable install failed; building in place'
    $PY setup.py build_ext --inplace && ln -sfn ../models fawkes_fast/models; }"
  export PYTHONPATH=$PWD:${PYTHONPATH:-}
fi
step extension 60 $PY -c "
import fawkes_fast.ops as o
print('HAS_EXTENSION', o.HAS_EXTENSION, 'CUDA kernels', o._CUDA_KERNELS)
assert o.HAS_EXTENSION and (o._CUDA_KERNELS or '$DEV' == 'cpu'), 'the extension (or its CUDA kernels) did not load'"
if [ $SMOKE = 0 ]; then
  step "op tests (CUDA cases)" 240 $PY -m pytest -q -rs -m cuda tests/test_ssim.py tests/test_tanh_adam.py tests/test_engine.py
fi
step "kernels vs floors" 120 $PY bench/bench_kernels.py --floors --quick --device $DEV "${KERNEL_ARGS[@]}" --json "$OUT/kernels.json"
step "engine step and parity" 420 $PY bench/bench_step.py --device $DEV "${STEP_ARGS[@]}" --shared "$SH" --json "$OUT/step.json"
step "photos end to end" 300 $PY bench/bench_cloak.py --device $DEV "${CLOAK_ARGS[@]}" --shared "$SH" --out "$OUT/cloak.md"
step "mixed sizes" 180 $PY bench/bench_mixed_sizes.py --device $DEV "${MIXED_ARGS[@]}" --shared "$SH" --json "$OUT/mixed.json"

{
  echo "## bench/gpu_check.sh $([ $SMOKE = 1 ] && echo '--cpu-smoke ')— $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  for f in kernels step mixed; do
    [ -f "$OUT/$f.json" ] && { echo "### $f"; echo '```json'; cat "$OUT/$f.json"; echo; echo '```'; }
  done
  [ -f "$OUT/cloak.md" ] && { echo "### photos end to end"; cat "$OUT/cloak.md"; }
  echo "failed steps: ${FAILED[*]:-none}"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
if [ ${#FAILED[@]} -gt 0 ]; then
  log "FAILED: ${FAILED[*]} (see $LOG)"
  exit 1
fi
log "all steps passed"
