#!/usr/bin/env bash
# The GPU rows of bench/, run on the GPU host (the device tool's machine) with the folder that
# `python bench/gpu.py prepare --out .gpu` wrote here carried along (carry: [".gpu"]):
#
#   bash bench/device_gpu.sh                  # results in $OUT/gpu.json, gpu.md, run.log
#   bash bench/device_gpu.sh --workloads lm   # the compiled-LM rows (bench/gpu_lm.py), ~5 min
#
# .gpu/site holds a runtime-only TVM (no libtvm_compiler.so) and the cp312 tvm_ffi, so
# ecograph.load() works there without TVM's compiler; the GPU host's own python3 (torch,
# transformers, nvidia-ml-py, nvcc) does the rest. The ecograph code that runs is this script's
# checkout; ECOGRAPH_GPU_DIR points at prepare's folder when that is elsewhere (default: .gpu
# in this checkout), ECOGRAPH_GPU_BUDGET caps the run's seconds (default 330).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GPU_DIR="$(cd "${ECOGRAPH_GPU_DIR:-$ROOT/.gpu}" && pwd)"
OUT="${OUT:-$ROOT/gpu-out}"
mkdir -p "$OUT"
cd "$ROOT" || exit 1
export PYTHONPATH="$GPU_DIR/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit \
    --format=csv
  nvcc --version | tail -1
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$OUT/machine.txt" 2>&1
python3 bench/gpu.py run --art "$GPU_DIR" --out "$OUT" --budget "${ECOGRAPH_GPU_BUDGET:-330}" "$@" \
  2>&1 | tee "$OUT/run.log"
rc=${PIPESTATUS[0]}
cat "$OUT/machine.txt" "$OUT/gpu.md" 2>/dev/null
exit "$rc"
