"""Decode throughput: HF ``generate`` greedy vs softtok discrete / soft / Gumbel, in one run.

Every variant generates exactly ``--tokens`` tokens per row (EOS and think end disabled),
from the same chat prompts, with the KV cache. Variants are interleaved round by round
and the median is reported, so background load hits all of them alike. Prints one JSON
object per (batch, variant) and a summary with the ratios:

* ``soft_vs_hf``: softtok soft tok/s / HF greedy tok/s (target >= 1.0 at batch 8),
* ``soft_vs_discrete``: softtok soft / softtok discrete (target within 5%),
* ``per_token_512_vs_64``: soft time per token at 512 vs 64 thinking tokens (target < 1.5).

    python benchmarks/decode.py            # embedded SmolLM2-135M-Instruct
    python benchmarks/decode.py --tiny     # a 2-layer random Qwen2 with SmolLM2's tokenizer (quick)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.models import load_model

QUESTIONS = [f"Tom has {3 + i} apples and buys {2 * i + 5} more. How many apples does he have?" for i in range(8)]


def setup(tiny: bool, device: str):
    model, tokenizer = load_model("smollm2-135m", device=device)
    if tiny:
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).to(device).eval()
    return model, tokenizer


def softtok_runner(model, tokenizer, mode: str, tokens: int):
    kwargs = {"temperature": 0.0} if mode == "discrete" else {}
    # A think-end string no model writes by chance keeps the (real) detection cost without firing;
    # max_answer_tokens=0 ends each row right after the forced think-end tokens.
    cfg = GenerationConfig(mode=mode, max_think_tokens=tokens, max_answer_tokens=0,
                           think_end="Final answer: 1357 zyxw", **kwargs)
    gen = SoftThinkingGenerator(model, tokenizer, cfg)
    gen.eos_ids = set()  # run the whole budget, like min_new_tokens in HF

    def run(prompts):
        results = gen.generate(prompts)
        assert all(r.think_tokens == tokens for r in results), [r.think_tokens for r in results]
    return run


def hf_runner(model, tokenizer, tokens: int):
    def run(prompts):
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        model.generate(**enc, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                       pad_token_id=tokenizer.pad_token_id)
    return run


def timed(fn, prompts) -> float:
    start = time.perf_counter()
    fn(prompts)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of SmolLM2")
    parser.add_argument("--tokens", type=int, default=256, help="generated tokens per row")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    opts = parser.parse_args()
    model, tokenizer = setup(opts.tiny, opts.device)
    name = "tiny-qwen2" if opts.tiny else "smollm2-135m"
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in QUESTIONS]
    summary = {"model": name, "device": opts.device, "torch": torch.__version__, "threads": torch.get_num_threads()}

    with torch.no_grad():
        for batch in opts.batches:
            prompts = chat[:batch]
            variants = {"hf_greedy": hf_runner(model, tokenizer, opts.tokens)}
            variants.update({f"softtok_{m}": softtok_runner(model, tokenizer, m, opts.tokens)
                             for m in ("discrete", "soft", "gumbel")})
            for fn in variants.values():  # warm-up
                fn(prompts[:1])
            times = {k: [] for k in variants}
            for _ in range(opts.repeats):
                for key, fn in variants.items():
                    times[key].append(timed(fn, prompts))
            tps = {k: batch * opts.tokens / statistics.median(v) for k, v in times.items()}
            for key in variants:
                median = statistics.median(times[key])
                print(json.dumps({"batch": batch, "variant": key, "tokens": opts.tokens,
                                  "median_s": round(median, 3), "tok_per_s": round(tps[key], 1)}))
            summary[f"b{batch}_soft_vs_hf"] = round(tps["softtok_soft"] / tps["hf_greedy"], 3)
            summary[f"b{batch}_soft_vs_discrete"] = round(tps["softtok_soft"] / tps["softtok_discrete"], 3)
            summary[f"b{batch}_gumbel_vs_hf"] = round(tps["softtok_gumbel"] / tps["hf_greedy"], 3)

        # Linear cost: time per token with 64 vs 512 thinking tokens (soft, largest batch).
        batch = max(opts.batches)
        per_token = {}
        for n in (64, 512):
            fn = softtok_runner(model, tokenizer, "soft", n)
            per_token[n] = statistics.median(timed(fn, chat[:batch]) for _ in range(max(1, opts.repeats - 1))) / n
        summary["per_token_ms_64"] = round(1e3 * per_token[64], 2)
        summary["per_token_ms_512"] = round(1e3 * per_token[512], 2)
        summary["per_token_512_vs_64"] = round(per_token[512] / per_token[64], 3)
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
