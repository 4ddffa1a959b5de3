#!/usr/bin/env bash
# The whole POST pipeline of docs/results_transfer.md on SmolLM2-135M-Instruct (2 CPU cores: ~40 min).
# Each step writes under $OUT (outputs/post); the last one prints the table.
#   bash benchmarks/transfer_results.sh                                   # S = every other layer (16 of 30)
#   OUT=outputs/post20 KEEP="[$(seq -s, 0 29 | tr , '\n' | awk '$1%3!=1' | paste -sd,)]" bash benchmarks/transfer_results.sh
set -euo pipefail
SOFTTOK=${SOFTTOK:-.venv/bin/softtok}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-outputs/post}
KEEP=${KEEP:-every_other}
# 1. S: a subset of L's layers, distilled on public problems (300 steps)
mkdir -p "$OUT"
sed "s|outputs/post/|$OUT/|g" configs/soft_prompt/distil_small.yaml > "$OUT/distil_small.yaml"  # folders under $OUT
[ -f "$OUT/small_model/config.json" ] || $SOFTTOK fit -c "$OUT/distil_small.yaml" --model.init_args.keep "$KEEP"
# 2. P_S: prompt tuning on S with the private task (the soft-prompt results page's setup: 60 steps, batch 8)
$PYTHON benchmarks/soft_prompt_results.py --model "$OUT/small_model" --methods prompt_tuning \
    --out "$OUT/source" --plot ''
# 2b. P_S with DP-SGD (Opacus, epsilon 8, delta 1e-3 = 1/480 rounded down)
$PYTHON benchmarks/soft_prompt_results.py --model "$OUT/small_model" --methods prompt_tuning \
    --dp-epsilon 8 --out "$OUT/source_dp" --plot ''
# 3. The upper bound: L's prompt tuned directly on the private task (does not depend on S)
[ -f outputs/post/direct/prompt_tuning.json ] || \
    $PYTHON benchmarks/soft_prompt_results.py --methods prompt_tuning --out outputs/post/direct --plot ''
# 4. Transfer on public data (selection: held-out public transfer loss), from P_S and from the DP P_S
rm -rf "$OUT/transfer" "$OUT/transfer_dp"
for kind in "" _dp; do
  $SOFTTOK fit -c configs/soft_prompt/transfer.yaml --model.init_args.source_model "$OUT/small_model" \
      --model.init_args.source_prompt "$OUT/source$kind/prompts/prompt_tuning" \
      --trainer.default_root_dir "$OUT/transfer$kind" --trainer.logger.init_args.save_dir "$OUT/transfer$kind"
done
best() { ls "$1"/lightning_logs/version_0/checkpoints/epoch*.ckpt | head -1; }
# 5. Every row, scored side by side on the same 200 test problems
$PYTHON benchmarks/transfer_results.py --small "$OUT/small_model" \
    --source-prompt "$OUT/source/prompts/prompt_tuning" \
    --other-source "DP-SGD, epsilon 8::$OUT/source_dp/prompts/prompt_tuning" \
    --transferred "KL T=2, absolute::$(best "$OUT/transfer")" "from the DP-SGD P_S::$(best "$OUT/transfer_dp")" \
    --direct outputs/post/direct/prompts/prompt_tuning --out "$OUT/results.json"
