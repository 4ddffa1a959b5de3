"""RL training step: hard vs soft vs fuzzy CoT, softtok's GRPO step vs TRL's, log-prob memory vs T, in one run.

Three measurements on the same model (``--model tiny``: a 2-layer random Llama built in code
with the character tokenizer of ``tests/tiny.py``; ``--model smollm2-135m``: the embedded
SmolLM2-135M-Instruct), the same prompts, the same group size ``G`` and the same budgets:

1. ``modes``: for ``hard``, ``soft`` and ``fuzzy`` CoT (``RolloutConfig(mode=...)``), the time of
   :func:`~softtok.rl.rollout.generate_rollouts` and of
   :func:`~softtok.rl.update.policy_update` (log-prob recompute with gradients, backward,
   gradient clipping, optimizer step; RLOO, the paper's default; the model stays in eval
   mode, dropout off, as for the rollouts). Every row runs to the
   budgets: EOS is disabled and ``think_end`` is a string the model does not write (the
   rows at the budget are counted and reported). The modes are interleaved round by
   round, each on its own copy of the same initial weights; after ``--warmup`` rounds,
   the median of ``--repeats`` rounds is reported, with the ratios soft / hard and fuzzy / hard.
2. ``trl``: one GRPO training step of softtok (hard CoT: rollout + reward + ``policy_update``
   with ``estimator="grpo"``, ``loss_type="dapo"``, ``epsilon = 0.2``, group-scaled rewards,
   gradient norm 1.0, AdamW) against TRL's ``GRPOTrainer`` (no vLLM, the same settings, the
   same model copy, tokenizer, prompts, reward and ``G``, one optimizer step per generation).
   TRL generates exactly ``think + len(think_end) + answer`` tokens per completion
   (``generation_kwargs={"min_new_tokens": ...}`` masks EOS until then), the number of
   positions softtok decodes and recomputes. A TRL step is timed from ``on_step_begin`` to
   ``on_step_end`` (generation, reward, log-probs, backward, optimizer step; not logging),
   its generation (``_generate_single_turn``) on its own as well; the first ``--warmup`` steps
   of each side are not counted. softtok's steps run in two halves, before and after TRL's.
3. ``memory``: the peak memory of the log-prob recompute with gradients and its backward
   (``RolloutBatch.log_probs`` then ``backward()`` of the summed log-probs), for hard and soft
   CoT at each CoT length in ``--memory-think``, on full-length rollouts of random content
   (memory depends on the shapes only). CUDA: ``torch.cuda.max_memory_allocated`` above the
   memory allocated before; CPU: the peak of the running total of torch's CPU allocations and
   frees recorded by ``torch.profiler`` (``profile_memory=True``), above what was allocated
   before the window (exact for tensors; it does not see memory outside torch's allocator).

Prints a table, then one JSON object (also written to ``--out``) with the exact command::

    python benchmarks/rl_step.py                     # tiny model: about 20 s on 2 CPU cores
    python benchmarks/rl_step.py --model smollm2-135m --group 4 --prompts 2 --think 64 --answer 16 --repeats 3
    python benchmarks/rl_step.py --model smollm2-135m --device cuda --think 512 --answer 32 --group 8 --prompts 4
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings

import torch
import transformers

from softtok.generation import SoftThinkingGenerator
from softtok.rl import AlgorithmConfig, RolloutBatch, RolloutConfig, generate_rollouts, policy_update
from softtok.rl.logprob import GaussianDensity

MODELS = ("tiny", "smollm2-135m")
MODES = ("hard", "soft", "fuzzy")
QUESTIONS = [f"Tom has {3 + i} apples and buys {2 * i + 5} more. How many apples does he have?" for i in range(64)]
#: A think-end string the model does not write, so every CoT runs to its budget. On the tiny model's
#: 83-token vocabulary "</think>" alone is one token, sampled about once in 83 hard CoT steps.
THINK_END = {"tiny": "</think>=#", "smollm2-135m": "</think>"}
#: GRPO settings shared by softtok and TRL (TRL 1.16's defaults where TRL has one).
GRPO = dict(loss_type="dapo", epsilon=0.2, scale_rewards="group", max_grad_norm=1.0)


def setup(name: str, device: str):
    """The model (fp32, eval mode) and its tokenizer."""
    if name == "tiny":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from tiny import tiny_model, tiny_tokenizer

        return tiny_model("llama").to(device), tiny_tokenizer()
    from softtok.models import load_model

    return load_model(name, device=device)


def digit_reward(texts: list[str]) -> list[float]:
    """The fraction of digits in each completion (cheap, deterministic, the same for both sides)."""
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in texts]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def make_generator(model, tokenizer, rollout: RolloutConfig) -> SoftThinkingGenerator:
    gen = SoftThinkingGenerator(model, tokenizer, rollout.generation_config())
    gen.eos_ids = set()  # every row runs to its budgets (min_new_tokens on the TRL side)
    return gen


# ------------------------------------------------------------------ 1. hard vs soft vs fuzzy
def time_modes(base, tokenizer, prompts: list[str], opts, think_end: str) -> dict:
    algorithm = AlgorithmConfig()  # RLOO, luspo: the paper's default
    runs = {}
    for mode in MODES:
        model = copy.deepcopy(base)
        rollout = RolloutConfig(mode=mode, group_size=opts.group, think_end=think_end,
                                max_think_tokens=opts.think, max_answer_tokens=opts.answer)
        runs[mode] = (model, rollout, make_generator(model, tokenizer, rollout),
                      torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.0))
    rec = {m: {"rollout_s": [], "update_s": [], "cot_tokens": [], "answer_positions": [], "at_budget": []}
           for m in MODES}
    for rnd in range(opts.warmup + opts.repeats):
        for mode in MODES:
            model, rollout, gen, optimizer = runs[mode]
            seeds = [1000 * rnd + i for i in range(len(prompts))]
            sync(opts.device)
            start = time.perf_counter()
            batch = generate_rollouts(gen, prompts, rollout, seeds=seeds)
            sync(opts.device)
            rolled = time.perf_counter()
            rewards = torch.tensor(digit_reward(batch.completions))
            sync(opts.device)
            start_update = time.perf_counter()
            policy_update(model, optimizer, batch, rewards, rollout, algorithm)
            sync(opts.device)
            end = time.perf_counter()
            if rnd < opts.warmup:
                continue
            r = rec[mode]
            r["rollout_s"].append(rolled - start)
            r["update_s"].append(end - start_update)
            r["cot_tokens"].append(float(batch.cot_mask.sum(1).mean()))
            r["answer_positions"].append(batch.answer_mask.shape[1])
            r["at_budget"].append(sum(x.think_end == "budget" for x in batch.results) / len(batch.results))
    out = {}
    for mode, r in rec.items():
        out[mode] = {"rollout_s": median(r["rollout_s"]), "update_s": median(r["update_s"]),
                     "step_s": median([a + b for a, b in zip(r["rollout_s"], r["update_s"], strict=True)]),
                     "cot_tokens_mean": round(statistics.mean(r["cot_tokens"]), 2),
                     "rows_at_think_budget": round(statistics.mean(r["at_budget"]), 4),
                     "answer_segment_positions": max(r["answer_positions"]),
                     "rollout_all_s": [round(x, 4) for x in r["rollout_s"]],
                     "update_all_s": [round(x, 4) for x in r["update_s"]]}
    ratios = {}
    for mode in ("soft", "fuzzy"):
        for what in ("rollout", "update", "step"):
            ratios[f"{what}_{mode}_over_hard"] = round(out[mode][f"{what}_s"] / out["hard"][f"{what}_s"], 3)
    return {"algorithm": "rloo (luspo, no clipping), AdamW", "results": out, "ratios": ratios}


# ------------------------------------------------------------------ 2. softtok vs TRL GRPO
def time_softtok_grpo(base, tokenizer, questions: list[str], opts, think_end: str, middle) -> tuple[dict, dict]:
    """softtok's GRPO steps, in two halves around ``middle()`` (the TRL run) so that a change of the
    machine's load hits both sides alike; returns softtok's figures and ``middle()``'s result."""
    model = copy.deepcopy(base)
    rollout = RolloutConfig(mode="hard", group_size=opts.group, think_end=think_end,
                            max_think_tokens=opts.think, max_answer_tokens=opts.answer)
    algorithm = AlgorithmConfig(estimator="grpo", scale_rewards=GRPO["scale_rewards"], loss_type=GRPO["loss_type"],
                                epsilon_low=GRPO["epsilon"], epsilon_high=GRPO["epsilon"], inner_epochs=1,
                                max_grad_norm=GRPO["max_grad_norm"])
    gen = make_generator(model, tokenizer, rollout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.0)
    rollout_s, update_s, step_s, lengths = [], [], [], []
    first_half = opts.warmup + (opts.repeats + 1) // 2
    other = None
    for step in range(opts.warmup + opts.repeats):
        if step == first_half:
            other = middle()
        prompts = [questions[(step * opts.prompts + i) % len(questions)] for i in range(opts.prompts)]
        sync(opts.device)
        start = time.perf_counter()
        batch = generate_rollouts(gen, prompts, rollout, seeds=[1000 * step + i for i in range(opts.prompts)])
        sync(opts.device)
        rolled = time.perf_counter()
        rewards = torch.tensor(digit_reward(batch.completions))
        policy_update(model, optimizer, batch, rewards, rollout, algorithm)
        sync(opts.device)
        end = time.perf_counter()
        if step >= opts.warmup:
            rollout_s.append(rolled - start)
            update_s.append(end - rolled)
            step_s.append(end - start)
            lengths.append(float((batch.cot_mask.sum(1) + batch.answer_mask.sum(1)).mean()))
    if other is None:
        other = middle()
    ours = {"step_s": median(step_s), "rollout_s": median(rollout_s), "update_s": median(update_s),
            "completion_positions_mean": round(statistics.mean(lengths), 2),
            "steps_all_s": [round(x, 4) for x in step_s]}
    return ours, other


def time_trl_grpo(base, tokenizer, questions: list[str], opts, completion_length: int) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    device = opts.device

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            sync(device)
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.times.append(time.perf_counter() - self._start)

    def digits(completions, **kwargs):
        return digit_reward(completions)

    timer = StepTimer()
    steps = opts.warmup + opts.repeats
    with tempfile.TemporaryDirectory(prefix="rl_step_trl.") as out_dir:
        config = trl.GRPOConfig(
            output_dir=out_dir, report_to=[], use_vllm=False, num_generations=opts.group,
            per_device_train_batch_size=opts.group * opts.prompts, gradient_accumulation_steps=1,
            max_completion_length=completion_length, generation_kwargs={"min_new_tokens": completion_length},
            max_steps=steps, learning_rate=opts.lr, lr_scheduler_type="constant", optim="adamw_torch",
            weight_decay=0.0, max_grad_norm=GRPO["max_grad_norm"], loss_type=GRPO["loss_type"],
            epsilon=GRPO["epsilon"], scale_rewards=GRPO["scale_rewards"], beta=0.0, num_iterations=1,
            temperature=1.0, top_p=1.0, top_k=0, bf16=False, fp16=False, use_cpu=device == "cpu",
            logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0,
        )
        trainer = trl.GRPOTrainer(model=copy.deepcopy(base), reward_funcs=digits, args=config,
                                  train_dataset=Dataset.from_dict({"prompt": questions}),
                                  processing_class=tokenizer, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # its per-step log lines would mix with this script's output
        generate_s, generate = [], trainer._generate_single_turn

        def timed_generate(*args, **kwargs):  # TRL's generation (HF generate) alone, inside the step
            sync(device)
            begin = time.perf_counter()
            out = generate(*args, **kwargs)
            sync(device)
            generate_s.append(time.perf_counter() - begin)
            return out

        trainer._generate_single_turn = timed_generate
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    logs = [entry for entry in trainer.state.log_history if "completions/mean_length" in entry]
    measured = timer.times[opts.warmup:]
    return {"step_s": median(measured), "generate_s": median(generate_s[opts.warmup:]),
            "rest_s": median([a - b for a, b in zip(measured, generate_s[opts.warmup:], strict=True)]),
            "steps_all_s": [round(x, 4) for x in measured],
            "first_step_s": round(timer.times[0], 4), "train_call_s": round(total, 3),
            "completion_length_mean": round(statistics.mean(e["completions/mean_length"] for e in logs), 2),
            "completion_length_min": min(e["completions/min_length"] for e in logs),
            "settings": {"num_generations": opts.group, "per_device_train_batch_size": opts.group * opts.prompts,
                         "max_completion_length": completion_length, "min_new_tokens": completion_length,
                         "loss_type": GRPO["loss_type"], "epsilon": GRPO["epsilon"], "beta": 0.0,
                         "scale_rewards": GRPO["scale_rewards"], "optim": "adamw_torch", "use_vllm": False}}


# ------------------------------------------------------------------ 3. recompute memory vs T
def synthetic_batch(model, tokenizer, prompts: list[str], rollout: RolloutConfig, answer_positions: int,
                    device: str) -> RolloutBatch:
    """A full-length batch (every row at the CoT budget and the answer budget) of random content."""
    g, t = rollout.group_size, rollout.max_think_tokens
    rows = [p for p in prompts for _ in range(g)]
    enc = tokenizer(rows, padding=True, add_special_tokens=False, return_tensors="pt")
    n = len(rows)
    weight = model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(t)
    ids = torch.randint(0, weight.shape[0], (n, t), generator=gen)
    cot_ids = cot_inputs = None
    sigma = 0.0 if rollout.mode == "hard" else \
        GaussianDensity.from_embedding(model.get_input_embeddings(), rollout.noise_factor).sigma
    if rollout.mode == "hard":
        cot_ids = ids.to(device)
    else:
        with torch.no_grad():
            embedded = model.get_input_embeddings()(ids.to(device))
            noise = torch.randn(embedded.shape, generator=gen).to(device=device, dtype=embedded.dtype)
            cot_inputs = (embedded + sigma * noise).detach()
    ones = lambda *shape: torch.ones(*shape, device=device)  # noqa: E731
    answer_ids = torch.randint(0, weight.shape[0], (n, answer_positions), generator=gen).to(device)
    fields = dict(prompt_ids=enc.input_ids.to(device), prompt_mask=enc.attention_mask.to(device),
                  cot_inputs=cot_inputs, cot_ids=cot_ids, cot_mask=ones(n, t), cot_weight=ones(n, t),
                  answer_ids=answer_ids, answer_mask=ones(n, answer_positions),
                  answer_weight=ones(n, answer_positions), completions=[], results=[], seeds=[],
                  max_length=t + answer_positions, sigma=sigma)
    return RolloutBatch(**fields)


def _walk(nodes):
    for node in nodes:
        yield node
        yield from _walk(node.children)


def cpu_peak_bytes(fn) -> int:
    """Peak of torch's CPU allocations while ``fn`` runs, above those alive before (profiler events)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [n for n in _walk(prof.profiler.kineto_results.experimental_event_tree())
              if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_time_ns):
        current += event.extra_fields.alloc_size
        peak = max(peak, current)
    return peak


def recompute_peak_bytes(model, batch: RolloutBatch, rollout: RolloutConfig, chunk_size: int, device: str) -> int:
    model.eval()  # dropout off (as in the updates); gradients still flow
    model.zero_grad(set_to_none=True)

    def run():
        out = batch.log_probs(model, rollout, chunk_size=chunk_size)
        (-(out.cot.sum() + out.answer.sum())).backward()

    try:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            run()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        return cpu_peak_bytes(run)
    finally:
        model.zero_grad(set_to_none=True)


def linearity(ts: list[int], values: list[float]) -> dict:
    """Least-squares line through (T, value), its R^2, and the ratios of successive secant slopes.

    For ``a + b T`` every secant slope is ``b`` (ratio 1); for ``a + c T^2`` with ``T`` doubling each
    time the slope doubles (ratio 2). Linear in ``T``: every ratio <= 1.2 and R^2 >= 0.99.
    """
    mt, mv = statistics.mean(ts), statistics.mean(values)
    slope = sum((t - mt) * (v - mv) for t, v in zip(ts, values, strict=True)) / sum((t - mt) ** 2 for t in ts)
    intercept = mv - slope * mt
    ss_res = sum((v - intercept - slope * t) ** 2 for t, v in zip(ts, values, strict=True))
    ss_tot = sum((v - mv) ** 2 for v in values) or 1.0
    secants = [(values[i + 1] - values[i]) / (ts[i + 1] - ts[i]) for i in range(len(ts) - 1)]
    ratios = [round(secants[i + 1] / secants[i], 3) if secants[i] > 0 else None for i in range(len(secants) - 1)]
    r2 = round(1 - ss_res / ss_tot, 5)
    return {"slope_mb_per_cot_step": round(slope, 4), "intercept_mb": round(intercept, 3), "r2": r2,
            "secant_slope_ratios": ratios,
            "linear_in_T": all(r is not None and r <= 1.2 for r in ratios) and r2 >= 0.99,
            "criterion": "every secant-slope ratio <= 1.2 (1: a + bT; 2: a pure T^2 with T doubling) and R^2 >= 0.99"}


def measure_memory(model, tokenizer, prompts: list[str], opts, think_end: str, end_tokens: int) -> dict:
    """The model's gradients are computed and cleared: its weights do not change."""
    vocab = model.get_input_embeddings().weight.shape[0]
    answer_positions = end_tokens + opts.answer
    prompt_tokens = tokenizer(prompts, padding=True, add_special_tokens=False, return_tensors="pt").input_ids.shape[1]
    n = opts.group * len(prompts)
    cuda = opts.device.startswith("cuda")
    result = {"method": ("torch.cuda.max_memory_allocated() - memory_allocated() before" if cuda
                         else "peak of torch's CPU allocation events (torch.profiler, profile_memory=True) above the "
                              "tensors alive before; excludes memory outside torch's allocator"),
              "what": "RolloutBatch.log_probs(model, config, chunk_size) with gradients, then backward of the summed "
                      "log-probs; full-length rollouts of random content (fixed shapes)",
              "vocab": vocab, "chunk_size": opts.chunk_size, "rows": n, "prompt_tokens": prompt_tokens,
              "answer_segment_positions": answer_positions, "attn_implementation": model.config._attn_implementation,
              "modes": {}}
    for mode in ("hard", "soft"):
        points = []
        for t in opts.memory_think:
            rollout = RolloutConfig(mode=mode, group_size=opts.group, think_end=think_end, max_think_tokens=t,
                                    max_answer_tokens=opts.answer)
            batch = synthetic_batch(model, tokenizer, prompts, rollout, answer_positions, opts.device)
            peak = recompute_peak_bytes(model, batch, rollout, opts.chunk_size, opts.device)
            logits = n * (t + answer_positions + 1) * vocab * 4  # the kept logits: prompt's last position on
            points.append({"think": t, "peak_mb": round(peak / 2**20, 3), "logits_fp32_mb": round(logits / 2**20, 3)})
        fit = linearity([p["think"] for p in points], [p["peak_mb"] for p in points])
        result["modes"][mode] = {"points": points, "fit": fit}
    return result


# ------------------------------------------------------------------ report
def table(report: dict) -> str:
    lines = [f"model {report['model']}, device {report['device']}, threads {report['threads']}, "
             f"G={report['settings']['group']}, prompts={report['settings']['prompts']}, "
             f"think={report['settings']['think']}, answer={report['settings']['answer']}"]
    if "modes" in report:
        lines += ["", f"{'mode':<6} {'rollout s':>10} {'update s':>10} {'step s':>10} {'CoT tokens':>11} "
                      f"{'at budget':>10}"]
        for mode, r in report["modes"]["results"].items():
            lines.append(f"{mode:<6} {r['rollout_s']:>10.4f} {r['update_s']:>10.4f} {r['step_s']:>10.4f} "
                         f"{r['cot_tokens_mean']:>11.1f} {r['rows_at_think_budget']:>10.2f}")
        lines.append("ratios: " + ", ".join(f"{k} {v}" for k, v in report["modes"]["ratios"].items()))
    if "trl" in report:
        t = report["trl"]
        lines += ["", f"GRPO step, completion length {t['completion_length']}: softtok hard "
                      f"{t['softtok']['step_s']:.4f} s (rollout {t['softtok']['rollout_s']:.4f} + update "
                      f"{t['softtok']['update_s']:.4f}), TRL {t['trl']['step_s']:.4f} s "
                      f"(generate {t['trl']['generate_s']:.4f} + rest {t['trl']['rest_s']:.4f}) "
                      f"(mean completion {t['trl']['completion_length_mean']}); softtok / TRL {t['softtok_over_trl']}"]
    if "memory" in report:
        m = report["memory"]
        lines += ["", f"recompute peak MB (vocab {m['vocab']}, chunk {m['chunk_size']}, rows {m['rows']}):"]
        for mode, r in m["modes"].items():
            lines.append(f"  {mode:<5} " + ", ".join(f"T={p['think']}: {p['peak_mb']:.2f}" for p in r["points"])
                         + f"  | slope {r['fit']['slope_mb_per_cot_step']} MB/step, R2 {r['fit']['r2']}, "
                           f"secant-slope ratios {r['fit']['secant_slope_ratios']}")
    lines += ["", "targets: " + ", ".join(f"{k}: {v['value']} ({'holds' if v['holds'] else 'fails'})"
                                          for k, v in report["targets"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--group", type=int, default=8, help="rollouts per prompt G")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--think", type=int, default=128, help="CoT budget (every row runs to it)")
    parser.add_argument("--answer", type=int, default=32, help="answer budget (every row runs to it)")
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds / steps (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds / steps first")
    parser.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (TRL's default)")
    parser.add_argument("--think-end", default=None, help="default: a string the model does not write")
    parser.add_argument("--memory-think", type=int, nargs="+", default=[32, 64, 128, 256], help="CoT lengths T")
    parser.add_argument("--chunk-size", type=int, default=64, help="CoT steps per chunk of the means (the default)")
    parser.add_argument("--parts", nargs="+", choices=("modes", "trl", "memory"), default=["modes", "trl", "memory"])
    parser.add_argument("--out", default=None, help="also write the JSON here")
    opts = parser.parse_args()

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    model, tokenizer = setup(opts.model, opts.device)
    think_end = opts.think_end or THINK_END[opts.model]
    end_tokens = len(tokenizer.encode(think_end, add_special_tokens=False))
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in QUESTIONS]
    prompts = chat[:opts.prompts]
    report = {"command": "python " + shlex.join(sys.argv), "model": opts.model, "device": opts.device,
              "device_name": torch.cuda.get_device_name(opts.device) if opts.device.startswith("cuda") else "cpu",
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "dtype": "float32",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    report["settings"] = {"group": opts.group, "prompts": opts.prompts, "rows": opts.group * opts.prompts,
                          "think": opts.think, "answer": opts.answer, "think_end": think_end,
                          "think_end_tokens": end_tokens, "repeats": opts.repeats, "warmup": opts.warmup, "lr": opts.lr,
                          "vocab": model.get_input_embeddings().weight.shape[0],
                          "prompt_tokens": [len(tokenizer.encode(p, add_special_tokens=False)) for p in prompts]}
    targets, wall = {}, {}
    clock = time.perf_counter()
    if "modes" in opts.parts:
        report["modes"] = time_modes(model, tokenizer, prompts, opts, think_end)
        value = report["modes"]["ratios"]["rollout_soft_over_hard"]
        targets["soft_rollout_over_hard_le_1.1"] = {"value": value, "holds": value <= 1.1}
        wall["modes"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        gc.collect()  # the copies of the model and their optimizer states (reference cycles)
    if "trl" in opts.parts:
        import trl

        report["versions"]["trl"] = trl.__version__
        length = opts.think + end_tokens + opts.answer
        ours, theirs = time_softtok_grpo(model, tokenizer, chat, opts, think_end,
                                         middle=lambda: time_trl_grpo(model, tokenizer, chat, opts, length))
        ratio = round(ours["step_s"] / theirs["step_s"], 3)
        report["trl"] = {"completion_length": length, "prompts_per_step": opts.prompts, "softtok": ours, "trl": theirs,
                         "softtok_over_trl": ratio,
                         "note": "softtok decodes think + len(think_end) + answer positions per row (the forced "
                                 "think_end tokens included); TRL generates that many tokens per completion"}
        targets["softtok_hard_step_over_trl_le_1.0"] = {"value": ratio, "holds": ratio <= 1.0}
        wall["trl"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        gc.collect()
    if "memory" in opts.parts:
        report["memory"] = measure_memory(model, tokenizer, prompts, opts, think_end, end_tokens)
        linear = {mode: r["fit"]["linear_in_T"] for mode, r in report["memory"]["modes"].items()}
        targets["recompute_memory_linear_in_T"] = {"value": linear, "holds": all(linear.values())}
        wall["memory"] = round(time.perf_counter() - clock, 1)
    report["targets"] = targets
    report["wall_s"] = wall
    print(table(report), flush=True)
    text = json.dumps(report)
    print(text)
    if opts.out:
        os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
        with open(opts.out, "w") as f:
            f.write(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
