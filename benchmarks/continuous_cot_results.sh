#!/usr/bin/env bash
# Continuous-CoT results on the in-repo tiny reasoning model (docs/results_continuous_cot.md).
# Every run is a plain `softtok fit|predict|validate` of a recipe; a finished run is skipped, so
# an interrupted script continues where it stopped. Then the tables and plots:
#   python benchmarks/continuous_cot_report.py $OUT
# Usage: bash benchmarks/continuous_cot_results.sh [stage ...]
#   stages: pretrain sweep train eval nll (default: all, in this order; train needs the sweep's choice),
#           smollm2 (a partial hard vs soft run on the embedded SmolLM2-135M-Instruct; not in the default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/cc_results}
ST=.venv/bin/softtok
PY=.venv/bin/python
MODEL=$OUT/tiny-reasoner                    # this script's own copy of the tiny model (pretrain stage)
RL=configs/continuous_cot/tiny_reasoner.yaml
read -ra MODES <<< "${MODES:-hard soft fuzzy}"   # training modes (env MODES overrides, e.g. MODES=hard)
read -ra LRS <<< "${LRS:-3e-5 1e-4 3e-4}"        # the validation sweep's rates (seed 1)
read -ra SEEDS <<< "${SEEDS:-1 2 3}"             # training seeds
mkdir -p "$OUT/runs" "$OUT/eval" "$OUT/nll"
QUIET=(--trainer.enable_progress_bar false --trainer.enable_model_summary false)

timed() {  # name command...: run it, and append its wall time to $OUT/times.tsv
  local name=$1; shift
  local start; start=$(date +%s.%N)
  "$@"
  printf '%s\t%s\n' "$name" "$(echo "$(date +%s.%N) - $start" | bc)" >> "$OUT/times.tsv"
}

pretrain() {
  [ -f "$MODEL/config.json" ] && { echo "skip pretrain (done)"; return; }
  timed pretrain $ST fit -c configs/continuous_cot/pretrain_tiny.yaml "${QUIET[@]}" \
    --trainer.callbacks.init_args.path "$MODEL" --trainer.logger.init_args.save_dir "$OUT/pretrain"
}

fit() {  # mode lr seed
  local name="$1_lr$2_s$3" dir="$OUT/runs/$1_lr$2_s$3"
  [ -f "$dir/lightning_logs/version_0/model/config.json" ] && { echo "skip $name (done)"; return; }
  local resume=() log="$dir/lightning_logs/version_0"
  if [ -f "$log/checkpoints/last.ckpt" ]; then  # resume; CSVLogger would delete the rows logged so far: keep them
    resume=(--ckpt_path "$log/checkpoints/last.ckpt")
    [ -f "$log/metrics.csv" ] && mv "$log/metrics.csv" "$log/metrics.part$(date +%s).csv"
  fi
  timed "fit_$name" $ST fit -c $RL "${QUIET[@]}" --model.init_args.model "$MODEL" --seed_everything "$3" \
    --model.init_args.rollout.mode "$1" --model.init_args.lr "$2" --trainer.default_root_dir "$dir" \
    --trainer.logger.init_args.save_dir "$dir" --trainer.logger.init_args.version 0 "${resume[@]}"
}

base_val() {  # the base model on the validation split (the sweep's reference)
  local dir="$OUT/runs/base_val"
  [ -f "$dir/lightning_logs/version_0/metrics.csv" ] && { echo "skip base_val (done)"; return; }
  timed base_val $ST validate -c $RL "${QUIET[@]}" --model.init_args.model "$MODEL" \
    --trainer.logger.init_args.save_dir "$dir" --trainer.logger.init_args.version 0
}

chosen_lr() {  # mode -> the sweep's choice (the report script writes chosen_lr.json)
  $PY benchmarks/continuous_cot_report.py "$OUT" --choose >/dev/null
  $PY -c "import json,sys; print(json.load(open('$OUT/chosen_lr.json'))['$1'])"
}

predict() {  # name model inference(hard|soft) sampling(greedy|sampled)
  local out="$OUT/eval/$1_$3_$4.jsonl" n=1
  [ -f "$out" ] && { echo "skip $1_$3_$4 (done)"; return; }
  [ "$4" = sampled ] && n=32
  timed "eval_$1_$3_$4" $ST predict -c $RL "${QUIET[@]}" --model.init_args.model "$2" \
    --model.init_args.rollout.mode "$3" --model.init_args.eval_modes "[$3_$4]" \
    --data.init_args.n_samples $n --data.init_args.batch_size 320 --trainer.logger false \
    --trainer.callbacks+=softtok.callbacks.JsonlPredictionWriter --trainer.callbacks.output_path "$out" \
    --trainer.callbacks.resume true
}

nll() {  # name model task [data args...]: NLL (nats / token) and greedy accuracy on 500 worked solutions
  local name=$1 model=$2 task=$3 dir="$OUT/nll/$1_$3"; shift 3
  [ -f "$dir/lightning_logs/version_0/metrics.csv" ] && { echo "skip nll ${name}_$task (done)"; return; }
  timed "nll_${name}_$task" $ST validate -c configs/continuous_cot/pretrain_tiny.yaml "${QUIET[@]}" \
    --model.init_args.architecture null --model.init_args.model "$model" --data.init_args.tokenizer "$model" \
    --data.init_args.task "$task" "$@" --data.init_args.train_size 1 --data.init_args.val_size 500 --data.init_args.eval_batch_size 500 \
    --trainer.logger.init_args.save_dir "$dir" --trainer.logger.init_args.version 0 --trainer.callbacks null
}

models() {  # name<TAB>folder of the base model and every trained run
  printf 'base\t%s\n' "$MODEL"
  for mode in "${MODES[@]}"; do
    local lr; lr=$(chosen_lr "$mode")
    for seed in "${SEEDS[@]}"; do printf '%s\t%s\n' "${mode}_s$seed" "$OUT/runs/${mode}_lr${lr}_s$seed/lightning_logs/version_0/model"; done
  done
}

# SmolLM2-135M-Instruct: the recipes hard.yaml / soft.yaml (chain_sum, 2-3 terms of 1-2 digits), shrunk
# to what 2 CPU cores allow: SMOL_STEPS optimizer steps of B = 2 prompts x G = 4 rollouts, 64-token CoT,
# lr 1e-5 (no sweep at this budget), no validation during fit; then greedy hard and soft inference on the
# recipes' 50 held-out problems.
SMOL_STEPS=${SMOL_STEPS:-12}
SMOL=(--model.init_args.rollout.group_size 4 --model.init_args.rollout.max_think_tokens 64
      --model.init_args.lr 1e-5 --model.init_args.warmup_steps 2 --trainer.limit_val_batches 0)
smol_fit() {  # mode
  local dir="$OUT/smollm2/$1"
  [ -f "$dir/lightning_logs/version_0/model/config.json" ] && { echo "skip smollm2 $1 (done)"; return; }
  local resume=() log="$dir/lightning_logs/version_0"
  if [ -f "$log/checkpoints/last.ckpt" ]; then
    resume=(--ckpt_path "$log/checkpoints/last.ckpt")
    [ -f "$log/metrics.csv" ] && mv "$log/metrics.csv" "$log/metrics.part$(date +%s).csv"
  fi
  timed "smollm2_fit_$1" $ST fit -c "configs/continuous_cot/$1.yaml" "${QUIET[@]}" "${SMOL[@]}" \
    --trainer.max_steps "$SMOL_STEPS" --trainer.default_root_dir "$dir" --trainer.logger.init_args.save_dir "$dir" \
    --trainer.logger.init_args.version 0 --trainer.callbacks+=softtok.callbacks.SavePretrained \
    "${resume[@]}"
}
smol_eval() {  # name model inference
  local out="$OUT/smollm2/eval/$1_$3_greedy.jsonl"
  [ -f "$out" ] && { echo "skip smollm2 $1_$3 (done)"; return; }
  mkdir -p "$OUT/smollm2/eval"
  timed "smollm2_eval_$1_$3" $ST predict -c configs/continuous_cot/soft.yaml "${QUIET[@]}" \
    --model.init_args.model "$2" --model.init_args.rollout.mode "$3" --model.init_args.eval_modes "[$3_greedy]" \
    --data.init_args.n_samples 1 --data.init_args.batch_size 25 --trainer.logger false \
    --trainer.callbacks+=softtok.callbacks.JsonlPredictionWriter --trainer.callbacks.output_path "$out" \
    --trainer.callbacks.resume true
}

stages=${*:-pretrain sweep train eval nll}
for stage in $stages; do
  case $stage in
    pretrain) pretrain ;;
    sweep) base_val; for mode in "${MODES[@]}"; do for lr in "${LRS[@]}"; do fit "$mode" "$lr" 1; done; done ;;
    train) for mode in "${MODES[@]}"; do lr=$(chosen_lr "$mode"); for seed in "${SEEDS[@]}"; do fit "$mode" "$lr" "$seed"; done; done ;;
    eval) models | while IFS=$'\t' read -r name folder; do
            for inference in hard soft; do for sampling in greedy sampled; do
              predict "$name" "$folder" "$inference" "$sampling"; done; done; done ;;
    nll) models | while IFS=$'\t' read -r name folder; do 
            nll "$name" "$folder" products --data.init_args.task_config '{min_digits: 1, max_digits: 1}'
            nll "$name" "$folder" chain_sum; done ;;  # out of domain (never trained on), then in domain
    smollm2) smol_fit hard; smol_fit soft
             for inference in hard soft; do
               smol_eval base smollm2-135m "$inference"
               for mode in hard soft; do smol_eval "$mode" "$OUT/smollm2/$mode/lightning_logs/version_0/model" "$inference"; done
             done ;;
    *) echo "unknown stage $stage (pretrain sweep train eval nll smollm2)"; exit 2 ;;
  esac
done
