#!/usr/bin/env bash
# The decode benchmark on one CUDA GPU (bf16, 512 tokens per row, batch 1 / 8 / 64): the embedded
# SmolLM2-135M-Instruct and a random-init model with Qwen2-0.5B's shapes. Prints JSON lines and
# one summary per model (tok/s ratios, host reads per token); about 5 minutes on an H100-class GPU.
#   bash benchmarks/decode_gpu.sh [outputs/decode_gpu.jsonl]
set -euo pipefail
out=${1:-outputs/decode_gpu.jsonl}
mkdir -p "$(dirname "$out")"
for model in smollm2-135m qwen2-0.5b-random; do
  python benchmarks/decode.py --model "$model" --device cuda --dtype bf16 --tokens 512 \
    --batches 1 8 64 --repeats 3 | tee -a "$out"
done
