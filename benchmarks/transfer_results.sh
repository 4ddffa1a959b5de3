#!/usr/bin/env bash
# The whole POST pipeline of docs/results_transfer.md on SmolLM2-135M-Instruct (2 CPU cores: ~35 min).
# Each step writes under outputs/post/; the last one prints the table.
set -euo pipefail
SOFTTOK=${SOFTTOK:-.venv/bin/softtok}
PYTHON=${PYTHON:-.venv/bin/python}
# 1. S: every other layer of L, distilled on public problems (300 steps)
[ -f outputs/post/small_model/config.json ] || $SOFTTOK fit -c configs/soft_prompt/distil_small.yaml
# 2. P_S: prompt tuning on S with the private task (the soft-prompt results page's setup: 60 steps, batch 8)
$PYTHON benchmarks/soft_prompt_results.py --model outputs/post/small_model --methods prompt_tuning \
    --out outputs/post/source --plot ''
# 2b. P_S with DP-SGD (Opacus, epsilon 8)
$PYTHON benchmarks/soft_prompt_results.py --model outputs/post/small_model --methods prompt_tuning \
    --dp-epsilon 8 --out outputs/post/source_dp --plot ''
# 3. The upper bound: L's prompt tuned directly on the private task
$PYTHON benchmarks/soft_prompt_results.py --methods prompt_tuning --out outputs/post/direct --plot ''
# 4. Transfer on public data (selection: held-out public transfer loss), from P_S and from the DP P_S
rm -rf outputs/post/transfer outputs/post/transfer_dp
$SOFTTOK fit -c configs/soft_prompt/transfer.yaml
$SOFTTOK fit -c configs/soft_prompt/transfer.yaml \
    --model.init_args.source_prompt outputs/post/source_dp/prompts/prompt_tuning \
    --trainer.default_root_dir outputs/post/transfer_dp --trainer.logger.init_args.save_dir outputs/post/transfer_dp
best() { ls "$1"/lightning_logs/version_0/checkpoints/epoch*.ckpt | head -1; }
# 5. Every row, scored side by side on the same 200 test problems
$PYTHON benchmarks/transfer_results.py --small outputs/post/small_model \
    --source-prompt outputs/post/source/prompts/prompt_tuning \
    --other-source "DP-SGD, epsilon 8=outputs/post/source_dp/prompts/prompt_tuning" \
    --transferred "KL T=2, absolute=$(best outputs/post/transfer)" "from the DP-SGD P_S=$(best outputs/post/transfer_dp)" \
    --direct outputs/post/direct/prompts/prompt_tuning --out outputs/post/results.json
