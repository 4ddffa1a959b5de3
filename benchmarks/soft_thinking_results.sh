#!/usr/bin/env bash
# Soft Thinking results on the embedded SmolLM2-135M-Instruct (docs/results_soft_thinking.md).
# Every run is a plain `softtok predict` of a recipe; wall times go to $OUT/times.tsv.
# Then: python benchmarks/soft_thinking_report.py $OUT  (table + plots).
#   bash benchmarks/soft_thinking_results.sh [stage ...]   stages: arith probe passk word (default: all, in this order)
#   MODES="swir multiplex" bash benchmarks/soft_thinking_results.sh arith passk   only these runs of the stages
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/results}
ST=.venv/bin/softtok
mkdir -p "$OUT"
ARITH=(--data.init_args.task chain_sum --data.init_args.size 200 --data.init_args.batch_size 32)
WORD=(--data.init_args.task gsm_symbolic --data.init_args.task_config null --data.init_args.size 200
      --data.init_args.batch_size 32 --model.init_args.generation.max_think_tokens 160)
PASSK=(--data.init_args.task chain_sum --data.init_args.size 25 --data.init_args.n_samples 16
       --data.init_args.batch_size 32)

run() {  # name recipe args...
  local name=$1 recipe=$2; shift 2
  [ -f "$OUT/$name.jsonl" ] && { echo "skip $name (done)"; return; }
  local start; start=$(date +%s.%N)
  $ST predict -c "configs/soft_thinking/$recipe.yaml" "$@" \
      --trainer.enable_progress_bar false --trainer.callbacks.init_args.output_path "$OUT/$name.jsonl" \
      --trainer.callbacks.init_args.resume true  # an interrupted run continues where it stopped
  printf '%s\t%s\n' "$name" "$(echo "$(date +%s.%N) - $start" | bc)" >> "$OUT/times.tsv"
}

# SwiReasoning with its reference window (512) never returns to latent within a 192-token budget;
# swir_w32 scales the window to the budget so that rows switch back and forth.
SWIR_W32=(--model.init_args.generation.window_size 32)
wanted() { [ -z "${MODES:-}" ] || [[ " $MODES " == *" $1 "* ]]; }

stages=${*:-arith probe passk word}
for stage in $stages; do
  case $stage in
    arith) for m in discrete_greedy discrete_sampled soft dirichlet gumbel multiplex swir; do
             wanted "$m" && run "arith_$m" "$m" "${ARITH[@]}"; done
           wanted swir_w32 && run arith_swir_w32 swir "${ARITH[@]}" "${SWIR_W32[@]}" ;;
    passk) for m in discrete_sampled gumbel dirichlet multiplex swir; do
             wanted "$m" && run "passk_$m" "$m" "${PASSK[@]}"; done ;;
    word)  for m in discrete_greedy gumbel soft discrete_sampled dirichlet; do run "word_$m" "$m" "${WORD[@]}"; done ;;
    probe) run arith_probe soft --data.init_args.task chain_sum --data.init_args.size 50 --data.init_args.batch_size 25 \
             --model.init_args.generation.probe true --model.init_args.generation.return_topk true \
             --model.init_args.keep_trace true ;;
    *) echo "unknown stage $stage (arith passk word probe)"; exit 2 ;;
  esac
done
