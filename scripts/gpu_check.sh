#!/usr/bin/env bash
# The GPU checks, run on a lent GPU machine (CI has none); logs go to $OUT (default ./gpu-check-out).
#   here:  python benchmarks/gpu.py prepare --out .gpucheck/smollm2   (the model's shape and tokenizer, no weights)
#          and, for a machine without internet, wheels of what it lacks (gguf, fastapi, pydantic, uvicorn, ...) in .whl/
#   there: bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
echo "== 1. engine tests on cuda"
SERVEWISE_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/engine 2>&1 | tee "$OUT/pytest-cuda.log" | tail -25
echo "== 2. parity and throughput"
timeout 240 python3 benchmarks/gpu.py run --model .gpucheck/smollm2 2>&1 | grep -v "Loading weights" | tee "$OUT/gpu-bench.log"
echo "== 3. servewise serve --device cuda"
timeout 90 python3 scripts/gpu_check.py --model .gpucheck/smollm2 --server-log "$OUT/serve.log" 2>&1 | tee "$OUT/serve-check.log"
