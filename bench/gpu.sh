#!/usr/bin/env bash
# The one prepared device check for a session lent a GPU (issues #12 and #8 extend it).
#   1. here:   bench/gpu_wheels.sh  (wheels the GPU image lacks, into .whl/)
#   2. device: run(command="bash bench/gpu.sh", carry=[".whl", "var/tokenizer"], timeout_s=600)
# It prints the versions, runs the GPU smoke (every task x method through the worker, the
# estimate vs max_memory_allocated, tokens/s, MFU, inference beside training, a resume, ours
# vs the Trainer) and leaves gpu_smoke.json and gpu_smoke.log in $OUT. Record the figures in
# bench/NOTES.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda",
torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__)'
# 8 minutes for the smoke leaves room in a 10-minute call; its JSON lands in $out.
GPU_SMOKE_DEVICE=cuda GPU_SMOKE_OUT="$out" timeout 500 python3 -m bench.gpu_smoke 2>&1 |
  grep -v -e 'Writing model shards' -e 'Loading weights' | tee "$out/gpu_smoke.log"
exit "${PIPESTATUS[0]}"
