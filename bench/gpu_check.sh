#!/usr/bin/env bash
# One-shot GPU-machine run, everything a lent GPU is needed for, in one go:
#   1. robust training (`models train-robust --recipe gpu`) on the GPU, two settings at once,
#      while the extension (CUDA kernels) builds on the CPUs;
#   2. the op tests with their CUDA cases; 3. the kernel benchmark; 4. cloaking vs the peer.
# The GPU machine is offline and lacks some packages, so the caller may carry:
#   .whl/      wheels (dlib-bin, pytorch-msssim) installed with --no-index
#   .devpkgs/  face_recognition_models/ holding the dlib model files (a stand-in package)
#   .devdata/  dlib_chips.npz (from models train-robust --save-chips) and shared/ (peer + LFW sample)
# Usage: OUT=/some/dir bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG=$OUT/gpu.log
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
export PYTHONUNBUFFERED=1

if ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >> "$LOG" 2>&1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
[ -d .devpkgs ] && export PYTHONPATH=$PWD/.devpkgs:${PYTHONPATH:-}
export FAWKES_FAST_CACHE=/tmp/ffcache
{ nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'; } >> "$LOG" 2>&1

# 1. robust training (pure PyTorch: needs no extension), in the background
train() {  # name, extra args
  $PY -m fawkes_fast.cli models train-robust --chips .devdata/dlib_chips.npz --recipe gpu --device cuda \
    --max-seconds "${TRAIN_SECONDS:-180}" -o "/tmp/robust/$1" "${@:2}" > "/tmp/train-$1.log" 2>&1
  cp "/tmp/robust/$1.weights.pt" "/tmp/robust/$1.record.json" "$OUT/" 2>/dev/null
}
# ROBUST_RUNS: one "name args..." per line (two runs: 4 files back, within $OUT's 8-file limit)
ROBUST_RUNS=${ROBUST_RUNS:-"robust-eps8 --eps 8 --pgd-step 1.6
robust-eps16 --eps 16 --pgd-step 3.2"}
PIDS=()
if [ -f .devdata/dlib_chips.npz ]; then
  while read -r name rest; do
    [ -n "$name" ] || continue
    log "training $name: $rest"
    # shellcheck disable=SC2086
    train "$name" $rest & PIDS+=($!)
  done <<< "$ROBUST_RUNS"
fi

# 2. build for the GPU present only (faster compile)
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; c = torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")')}
export TORCH_CUDA_ARCH_LIST MAX_JOBS=${MAX_JOBS:-8}
log "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
# PEP 660 editable build with the setuptools already there (the legacy `setup.py develop`
# path re-invokes pip with build isolation, which needs the network)
$PY -m pip install --no-build-isolation --no-deps --use-pep517 -e . >> "$LOG" 2>&1
rc_build=$?
if [ $rc_build -ne 0 ]; then  # fall back: build in place; the target bank is read from models/
  log "editable install failed; building in place"
  $PY setup.py build_ext --inplace >> "$LOG" 2>&1 && rc_build=0
  ln -sfn ../models fawkes_fast/models
  export PYTHONPATH=$PWD:${PYTHONPATH:-}
fi
log "build rc=$rc_build"
$PY -c 'import fawkes_fast.ops as o; print("HAS_EXTENSION", o.HAS_EXTENSION, "CUDA kernels", o._CUDA_KERNELS)' 2>&1 | tee -a "$LOG"

if [ ${#PIDS[@]} -gt 0 ]; then wait "${PIDS[@]}"; log "training done"; tail -n 40 /tmp/train-*.log >> "$LOG"; fi

log "pytest (op tests, CUDA cases included)"
$PY -m pytest -q -rs tests/test_ssim.py tests/test_tanh_adam.py tests/test_ops_errors.py tests/test_transforms.py \
  tests/test_engine.py > /tmp/pytest.log 2>&1
rc_test=$?
grep -v "^tests/.*PASSED" /tmp/pytest.log | tail -n 60 >> "$LOG"; tail -n 3 /tmp/pytest.log
log "pytest rc=$rc_test"

rc_bench=0
if [ "${KERNELS:-1}" != 0 ]; then  # KERNELS=0 skips the kernel benchmark (kernels unchanged)
  log "bench kernels"
  $PY bench/bench_kernels.py --quick --out "$OUT/kernels.md" >> "$LOG" 2>&1
  rc_bench=$?
fi
log "bench cloak vs peer"
SH=$PWD/../shared; [ -d .devdata/shared ] && SH=$PWD/.devdata/shared
$PY bench/bench_cloak.py --device cuda --batch 1 8 64 128 --photos 3 --iters 20 --shared "$SH" --out "$OUT/cloak.md" >> "$LOG" 2>&1
rc_cloak=$?
log "bench rc=$rc_bench cloak rc=$rc_cloak"
cat "$OUT/kernels.md" "$OUT/cloak.md" 2>/dev/null
exit $(( rc_build || rc_test || rc_bench || rc_cloak ))
