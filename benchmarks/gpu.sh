#!/usr/bin/env bash
# The GPU checks in one call, for a session lent a CUDA machine: the Triton attention kernel against SDPA (and an
# XLM-R base encoder with each attention), the bench harness's end-to-end latency of xlm-roberta-base's shape on the
# GPU (eager, then CUDA-graph replays), and the kernel's tests on the real device. Each step has its own time limit so
# that one slow step cannot take the others' results with it; logs and RESULTS.md go to $OUT.
#
#     OUT=runs/gpu bash benchmarks/gpu.sh
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/env.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, report the exit status
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/status.txt"
}

step attention 280 $PY -m benchmarks.attention
if $PY -c "import sys, benchmarks.models as m; sys.exit(not m.TOKENIZER.is_file())"; then
  base=runs/gpu-models/xlmr-base-shape
  [ -d "$base" ] || $PY -c "import benchmarks.models as m, pathlib; m.random_base(pathlib.Path('$base'), 7)"
  for graphs in no-cuda-graphs cuda-graphs; do
    step "latency-$graphs" 90 $PY -m benchmarks.latency "$base" --devices cuda --batch-sizes 1 32 \
      --seq-lengths 128 512 --repeats 50 --"$graphs" --out "runs/gpu-latency-$graphs" --key "latency-gpu-$graphs" \
      --title "Latency on the GPU: xlm-roberta-base shape, torch fp32 ($graphs)"
  done
else
  echo "== latency: skipped, XLM-R's tokenizer is not at ../shared/tokenizers/xlm-roberta" | tee -a "$OUT/status.txt"
fi
step kernel-tests 240 $PY -m pytest -q -p no:cacheprovider tests/test_flash_attention.py
cp benchmarks/RESULTS.md "$OUT/"
