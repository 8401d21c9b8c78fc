#!/usr/bin/env bash
# Every GPU row of bench/README.md in one short run, for a lent GPU machine: at most 9.75 minutes (the rows'
# limits add up to 585 s, under a 10-minute call limit), about 5 expected on an H100/H200.
#   bash bench/gpu_suite.sh [OUT_DIR]      (default: $OUT when set, else bench/results/gpu)
# Needs only torch and this repository (no pip install): each configuration is one bench_gpu.py process with
# its own time limit, so a failure (e.g. no compiler for torch.compile) costs that row, not the others.
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/results/gpu}}"
mkdir -p "$out"
export PYTHONPATH=src
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} > "$out/machine.txt"
row() {  # row NAME LIMIT_S ARGS...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" python bench/bench_gpu.py "$@" --out "$out/$name.md" > "$out/$name.log" 2>&1
  echo "$name: rc=$? in $((SECONDS - t0)) s ($*)" | tee -a "$out/summary.txt"
}
: > "$out/summary.txt"
# most important first: the MFU target, then the sampling and compile fast paths, then what each part gives
row bf16            75                                 # bf16 autocast, channels_last, flash SDPA, fused Adam
row bf16_cudagraphs 150 --sample-compile --sample-compile-mode reduce-overhead --steps 50   # sampling: CUDA graphs
row bf16_compile    180 --compile                      # training and sampling compiled (inductor)
row bf16_foreach    45 --no-fused-adam                 # what fused Adam gives
row bf16_nchw       45 --no-channels-last              # what channels_last gives
row fp32_tf32       45 --dtype fp32                    # what bf16 gives (TF32 matmuls/convolutions)
row bf16_sdpa_math  45 --sdpa math                     # what the flash kernel gives
cat "$out"/*.md > "$out/all.md" 2>/dev/null
cat "$out/summary.txt"
