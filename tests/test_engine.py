"""The device-resident decode engine against its oracles.

* the reference loop (``tests/reference_generator.py``: the original per-step host loop) token for
  token, for deterministic modes, every tiny architecture, soft prompts, mixed prompt lengths and rows
  ending at different steps, whatever ``sync_every``, compaction and cache kind;
* HF ``generate`` greedy with the static cache;
* the compiled step against the eager step (one graph, no recompile as rows finish);
* seeded rows: identical alone, in a batch of 8, and under 2-process DDP;
* host reads per generated token.
"""

import json

import pytest
import torch
from reference_generator import ReferenceGenerator
from test_prompts import METHODS, perturb
from tiny import QUESTIONS, tiny_model, tiny_tokenizer
from torch._dynamo.utils import counters

from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.soft.random import row_seed

# Mixed lengths; "</think>" ends some rows early on the tiny models, others run to the budget.
TEXTS = ["hello 1+2", "x", "7 + 8 = 15 and then", "ab", "Final answer: 3", "q r s t u v w", "zz", "9-4="]
DETERMINISTIC = {  # (Cold Stop is off in discrete greedy: its entropy is always 0)
    "discrete": dict(mode="discrete", temperature=0.0, cold_stop_entropy=0.0),
    "soft_k1": dict(mode="soft", max_topk=1),
    "soft_k10": dict(mode="soft", max_topk=10, top_k=20),
}


def config(mode: str, **kw) -> GenerationConfig:
    """Short budgets, Cold Stop, a one-character think_end and a stop string: rows end in different ways."""
    base = dict(think_end="a", max_think_tokens=10, max_answer_tokens=5, cold_stop_entropy=2.5,
                cold_stop_length=3, stop_strings=["b"], return_topk=True)
    return GenerationConfig(**{**base, **DETERMINISTIC[mode], **kw})


def outputs(results):
    return [(r.think_ids, r.answer_ids, r.think_end, r.think_tokens, r.answer_tokens, r.topk_ids) for r in results]


def assert_same(got, want):
    assert outputs(got) == outputs(want)
    for g, w in zip(got, want, strict=True):
        # Rows leave the batch at other steps than in the reference (at host checks), so batch shapes and
        # rounding differ (1e-7), which the soft dynamics of a random tiny model amplify to 1e-4 in 10 steps.
        assert g.entropy == pytest.approx(w.entropy, rel=1e-3, abs=1e-4)
        assert g.thinking == w.thinking and g.answer == w.answer


@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_engine_equals_the_reference_loop(arch, mode, tokenizer):
    model = tiny_model(arch)
    want = ReferenceGenerator(model, tokenizer, config(mode)).generate(TEXTS)
    for kw in (dict(sync_every=1), dict(sync_every=3), dict(compact=False)):
        got = SoftThinkingGenerator(model, tokenizer, config(mode, **kw)).generate(TEXTS)
        assert_same(got, want)
    # A static cache attends over its whole (masked) length, which rounds differently in float32 (about
    # 1e-6 relative: a near-tie among the top-10 can swap); in float64 the tokens must be identical.
    model = model.double()
    want = ReferenceGenerator(model, tokenizer, config(mode)).generate(TEXTS)
    got = SoftThinkingGenerator(model, tokenizer, config(mode, cache="static")).generate(TEXTS)
    assert_same(got, want)


def test_the_compared_cases_end_in_every_way(tokenizer):
    """The comparisons above see rows ending by think_end, Cold Stop, budget and EOS, at different steps."""
    results = [r for arch in ("llama", "qwen2")
               for r in ReferenceGenerator(tiny_model(arch), tokenizer, config("soft_k10")).generate(TEXTS)]
    assert {r.think_end for r in results} == {"think_end", "cold_stop", "budget", "eos"}
    assert len({r.think_tokens for r in results}) >= 4 and len({r.answer_tokens for r in results}) >= 2


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "iapt"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_engine_equals_the_reference_loop_with_a_soft_prompt(method, cache, tokenizer):
    model = tiny_model("llama").double()  # float64: see test_engine_equals_the_reference_loop
    prompt = METHODS[method]().build(model, tokenizer)
    perturb(prompt)
    want = ReferenceGenerator(model, tokenizer, config("soft_k10")).generate(TEXTS, prefill=prompt)
    got = SoftThinkingGenerator(model, tokenizer, config("soft_k10", cache=cache, sync_every=2)).generate(
        TEXTS, prefill=prompt)
    assert_same(got, want)


def test_probe_equals_the_reference_loop(tokenizer):
    model = tiny_model("qwen2")
    cfg = config("soft_k10", probe=True, cold_stop_entropy=0.0)
    want = ReferenceGenerator(model, tokenizer, cfg).generate(TEXTS)
    got = SoftThinkingGenerator(model, tokenizer, cfg).generate(TEXTS)
    assert_same(got, want)
    assert sum(w.js_top1 is not None for w in want) >= len(want) - 2  # rows with concept tokens have JS values
    for g, w in zip(got, want, strict=True):
        if w.js_top1 is None:
            assert g.js_top1 is None and g.js_top2 is None
        else:
            assert (g.js_top1, g.js_top2) == pytest.approx((w.js_top1, w.js_top2), rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("mode", ["discrete", "soft_k1"])
def test_static_cache_equals_hf_greedy(mode, tokenizer):
    from test_generator import hf_tokens, softtok_tokens

    model = tiny_model("gemma")
    prompts = TEXTS[:4]
    expected = hf_tokens(model, tokenizer, prompts)
    got, _ = softtok_tokens(model, tokenizer, prompts, cache="static", sync_every=5, **DETERMINISTIC[mode])
    assert got == expected


def test_host_reads_once_per_sync_interval(tokenizer):
    model = tiny_model("llama")
    gen = SoftThinkingGenerator(model, tokenizer, GenerationConfig(mode="soft", think_end="</think>",
                                                                   max_think_tokens=64, max_answer_tokens=16))
    results = gen.generate(TEXTS)
    longest = max(r.think_tokens + len(gen.think_end_ids) * (r.think_end in ("budget", "cold_stop"))
                  + r.answer_tokens for r in results)
    assert longest > 64
    # One read per 16 steps, none at the loop's last step (every row is done there).
    assert gen.host_syncs == len(range(16, gen.steps, 16)) + (gen.steps % 16 == 0)
    assert longest <= gen.steps < longest + 16  # stopped at the first check after the last row ended
    assert gen.host_syncs / longest <= 1 / 16


def test_the_loop_ends_when_the_budgets_say_every_row_must_be_done(tokenizer):
    """Rows that can only run to their budgets end the loop on their last step, not at the next check."""
    gen = SoftThinkingGenerator(tiny_model("llama"), tokenizer, GenerationConfig(
        mode="soft", think_end="zzzzzz", max_think_tokens=40, max_answer_tokens=0))
    gen.eos_ids = set()  # nothing ends a row before its budget
    results = gen.generate(TEXTS[:3])
    assert [r.think_tokens for r in results] == [40] * 3
    assert gen.steps == 41  # 40 concept tokens, then the step that forces think_end (and ends the row)
    assert gen.host_syncs == 2  # at steps 16 and 32; the second one bounds the rest


# --------------------------------------------------------------------------- randomness per row
RANDOM = {
    "discrete_sampled": dict(mode="discrete", temperature=0.8, answer_temperature=0.8),
    "dirichlet": dict(mode="dirichlet", alpha=1.0),
    "gumbel": dict(mode="gumbel"),
    "moi": dict(mode="moi"),
    "soft_noise": dict(mode="soft", noise_factor=0.5, answer_temperature=1.0),
}


@pytest.mark.parametrize("mode", RANDOM)
def test_seeded_row_is_the_same_alone_and_in_any_batch(mode, tokenizer):
    """The draws depend on (row seed, step) only. The model runs in float64: in float32 a padded batch
    rounds differently from the row alone (1e-7), and the soft dynamics of a random tiny model amplify
    that tenfold per step until a sampled token flips, whatever the random numbers."""
    model = tiny_model("qwen2").double()
    cfg = GenerationConfig(**RANDOM[mode], think_end="a", max_think_tokens=12, max_answer_tokens=6)
    gen = SoftThinkingGenerator(model, tokenizer, cfg)
    seeds = [11, 12, 13, 14, 15, 16, 17, 18]
    batched = gen.generate(TEXTS, seeds=seeds)
    alone = [gen.generate([t], seeds=[s])[0] for t, s in zip(TEXTS, seeds, strict=True)]
    assert outputs(batched) == outputs(alone)
    reordered = gen.generate(TEXTS[::-1], seeds=seeds[::-1])[::-1]
    assert outputs(reordered) == outputs(batched)
    # The seed matters: other seeds give other outputs.
    other = gen.generate(TEXTS, seeds=[s + 100 for s in seeds])
    assert outputs(other) != outputs(batched)
    assert [r.seed for r in batched] == seeds
    # Any integer is a seed, taken mod 2^64: 2^64 + 11 draws as 11.
    assert outputs(gen.generate(TEXTS[:1], seeds=[2**64 + 11])) == outputs(batched[:1])


def test_default_seeds_follow_torch_manual_seed(tokenizer):
    gen = SoftThinkingGenerator(tiny_model("llama"), tokenizer, GenerationConfig(mode="gumbel", max_think_tokens=8))
    torch.manual_seed(3)
    first = gen.generate(TEXTS[:3])
    second = gen.generate(TEXTS[:3])
    torch.manual_seed(3)
    again = gen.generate(TEXTS[:3])
    assert outputs(first) == outputs(again) and outputs(first) != outputs(second)


# --------------------------------------------------------------------------- compiled step
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_step_equals_eager_with_one_graph_and_no_recompiles(tokenizer, fresh_dynamo):
    """Static cache + compile: the step is one graph (fullgraph=True), equal to eager, and neither rows
    finishing at different steps nor a second batch with other prompts recompile it."""
    model = tiny_model("llama")
    kw = dict(cache="static", max_cache_len=256, sync_every=4)
    seeds = list(range(len(TEXTS)))
    for mode in ("soft_k10", "gumbel"):
        settings = config(mode, **kw) if mode in DETERMINISTIC else GenerationConfig(
            mode="gumbel", think_end="a", max_think_tokens=10, max_answer_tokens=5, **kw)
        eager = SoftThinkingGenerator(model, tokenizer, settings).generate(TEXTS, seeds=seeds)
        compiled_gen = SoftThinkingGenerator(model, tokenizer, GenerationConfig(
            **{**settings.__dict__, "compile": True}))
        before = counters["stats"]["unique_graphs"]
        compiled = compiled_gen.generate(TEXTS, seeds=seeds)
        assert counters["stats"]["unique_graphs"] - before == 1
        assert outputs(compiled) == outputs(eager)
        assert len({r.think_tokens for r in eager}) >= 2  # rows finished at different steps
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = compiled_gen.generate(TEXTS[::-1], seeds=seeds[::-1])
        assert outputs(again[::-1]) == outputs(compiled)
        torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["swir", "multiplex"])
def test_compiled_swir_and_multiplex_steps_equal_eager(tokenizer, fresh_dynamo, mode):
    """The SwiReasoning switch state and the Multiplex draws compile into the one static-cache graph too."""
    model = tiny_model("llama")
    settings = GenerationConfig(mode=mode, think_end="a", max_think_tokens=10, max_answer_tokens=5, window_size=2,
                                cache="static", max_cache_len=256, sync_every=4)
    seeds = list(range(len(TEXTS)))
    eager = SoftThinkingGenerator(model, tokenizer, settings).generate(TEXTS, seeds=seeds)
    before = counters["stats"]["unique_graphs"]
    compiled = SoftThinkingGenerator(model, tokenizer, GenerationConfig(**{**settings.__dict__, "compile": True}))
    results = compiled.generate(TEXTS, seeds=seeds)
    assert counters["stats"]["unique_graphs"] - before == 1
    assert outputs(results) == outputs(eager)
    if mode == "swir":
        assert [r.latent for r in results] == [r.latent for r in eager]
        assert any(any(r.latent) and not all(r.latent) for r in eager)  # rows did switch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("mode", ["soft", "swir", "multiplex"])
def test_cuda_graph_step_equals_eager(tokenizer, fresh_dynamo, mode):
    """On CUDA the compiled static-cache step is replayed as a CUDA graph: it equals eager, also for a second
    batch (the state fed back is cloned before the next replay overwrites the graph's outputs)."""
    model = tiny_model("llama").cuda()
    settings = GenerationConfig(mode=mode, think_end="a", max_think_tokens=10, max_answer_tokens=5, window_size=2,
                                cache="static", max_cache_len=256, sync_every=4)
    seeds = list(range(len(TEXTS)))
    eager = SoftThinkingGenerator(model, tokenizer, settings).generate(TEXTS, seeds=seeds)
    compiled = SoftThinkingGenerator(model, tokenizer, GenerationConfig(**{**settings.__dict__, "compile": True}))
    assert outputs(compiled.generate(TEXTS, seeds=seeds)) == outputs(eager)
    assert outputs(compiled.generate(TEXTS[::-1], seeds=seeds[::-1])[::-1]) == outputs(eager)


def test_compiled_update_with_a_dynamic_cache_equals_eager(tokenizer, fresh_dynamo):
    """``compile`` with a dynamic cache compiles the phase update (mixing included) only; rows leaving the
    batch at host checks change its batch size, which recompiles once with a symbolic batch, not per size."""
    model = tiny_model("qwen2")
    settings = config("soft_k10", sync_every=2, return_topk=False)  # (tail components may swap at 1e-7)
    eager = SoftThinkingGenerator(model, tokenizer, settings).generate(TEXTS)
    before = counters["stats"]["unique_graphs"]
    compiled = SoftThinkingGenerator(model, tokenizer, GenerationConfig(**{**settings.__dict__, "compile": True}))
    assert outputs(compiled.generate(TEXTS)) == outputs(eager)
    assert counters["stats"]["unique_graphs"] - before <= 2


# --------------------------------------------------------------------------- bad input
def test_bad_engine_settings_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="sync_every=0"):
        GenerationConfig(sync_every=0)
    with pytest.raises(ValueError, match="cache='paged'"):
        GenerationConfig(cache="paged")
    with pytest.raises(ValueError, match="max_cache_len=1"):
        GenerationConfig(max_cache_len=1)
    with pytest.raises(ValueError, match="probe=True"):
        GenerationConfig(probe=True, compile=True)
    model = tiny_model("llama")
    gen = SoftThinkingGenerator(model, tokenizer, GenerationConfig(cache="static", max_cache_len=40,
                                                                   max_think_tokens=20, max_answer_tokens=8))
    with pytest.raises(ValueError, match=r"max_cache_len=40 cannot hold the prompt \(\d+ positions"):
        gen.generate(["a long prompt of many characters"])
    with pytest.raises(ValueError, match="seeds has 1 values for 2 prompts"):
        gen.generate(["a", "b"], seeds=[1])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        gen.generate(["a", ""])


def test_a_model_without_eos_runs_to_its_budgets(tokenizer):
    """No EOS id anywhere (model config and tokenizer): nothing but the budgets and strings end a row."""
    from scripted import ScriptedLM, peaked

    model = ScriptedLM(torch.stack([peaked(83, 1)] * 4), eos_token_id=None)  # would be EOS 1 if it were one
    tok = tiny_tokenizer()
    tok.eos_token = None
    gen = SoftThinkingGenerator(model, tok, GenerationConfig(mode="discrete", temperature=0.0, max_think_tokens=3,
                                                            max_answer_tokens=2))
    (res,) = gen.generate([[5, 6]])
    assert gen.eos_ids == set() and (res.think_end, res.think_tokens, res.answer_tokens) == ("budget", 3, 2)
    assert gen.steps == 3 + len(gen.think_end_ids) + 2  # the budgets bound the run exactly


def test_static_cache_refuses_a_model_that_cannot_have_one(tokenizer, monkeypatch):
    model = tiny_model("gpt2")
    monkeypatch.setattr(type(model), "_can_compile_fullgraph", False)
    gen = SoftThinkingGenerator(model, tokenizer, GenerationConfig(cache="static", max_think_tokens=4))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel \(model_type='gpt2'\) cannot.*cache='dynamic'"):
        gen.generate(["ab"])


# --------------------------------------------------------------------------- modules and DDP
def test_module_seeds_depend_on_problem_and_sample_only(model_dir, tokenizer):
    from softtok.modules import SoftThinkingModule

    module = SoftThinkingModule(model=model_dir, generation={"mode": "gumbel", "max_think_tokens": 6,
                                                             "max_answer_tokens": 3, "think_end": "a"},
                                system_prompt=None, dtype="float64")  # float64: see the test above
    records = [{"index": i, "sample": s, "question": q, "answer": a}
               for i, (q, a) in enumerate(QUESTIONS) for s in range(2)]
    together = module.run(records)
    apart = [module.run([r])[0] for r in records[::-1]][::-1]
    strip = lambda r: {k: v for k, v in r.items() if k != "batch_seconds"}  # noqa: E731
    assert [strip(r) for r in together] == [strip(r) for r in apart]
    assert together[0]["seed"] == row_seed(module.base_seed, 0, 0)


@pytest.mark.slow
def test_ddp_predict_gives_the_records_of_one_process(model_dir, data_file, tmp_path):
    """``softtok predict`` with 2 processes (ddp_spawn, gloo) writes the records of a 1-process run."""
    from test_soft_thinking_cli import args

    from softtok.callbacks import read_jsonl
    from softtok.cli import cli

    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"pred{devices}.jsonl"
        cli(args("predict", model_dir, data_file, out, "--data.init_args.n_samples", "2",
                 "--model.init_args.generation.mode", "gumbel", "--model.init_args.dtype", "float64",
                 "--trainer.devices", str(devices),
                 "--trainer.strategy", "ddp_spawn" if devices > 1 else "auto"))
        runs[devices] = sorted(json.dumps({k: v for k, v in r.items() if k != "batch_seconds"}, sort_keys=True)
                                for r in read_jsonl(out))
    assert len(runs[1]) == 2 * len(QUESTIONS)
    assert runs[1] == runs[2]



@pytest.mark.slow
def test_engine_on_smollm2_equals_the_reference_loop_and_hf_greedy():
    """The embedded SmolLM2-135M-Instruct: the engine equals the reference loop (discrete greedy, soft
    K = 1 and K = 10, mixed prompt lengths, rows ending by think_end, stop string and budget), both cache
    kinds; discrete greedy equals HF ``generate``."""
    from test_models import require_embedded

    from softtok.models import load_model

    require_embedded("smollm2-135m")
    model, tok = load_model("smollm2-135m")
    questions = ["What is 2 + 3?", "Tom has 7 apples and eats 2. How many are left?", "Say hi.", "12 + 30 - 5 = ?"]
    prompts = [tok.apply_chat_template([{"role": "system", "content": "Think step by step, then end with a line "
                                         "'Final answer: <answer>'."}, {"role": "user", "content": q}],
                                       tokenize=False, add_generation_prompt=True) for q in questions]
    for mode in DETERMINISTIC:
        cfg = GenerationConfig(**{**DETERMINISTIC[mode], "cold_stop_entropy": 0.0}, think_end="Final answer:",
                               max_think_tokens=40, max_answer_tokens=6, stop_strings=["\n"], return_topk=True)
        want = ReferenceGenerator(model, tok, cfg).generate(prompts)
        for kw in (dict(sync_every=4), dict(cache="static")):
            got = SoftThinkingGenerator(model, tok, GenerationConfig(**{**cfg.__dict__, **kw})).generate(prompts)
            assert [r.think_ids + r.answer_ids for r in got] == [r.think_ids + r.answer_ids for r in want]
            assert [r.think_end for r in got] == [r.think_end for r in want]
        if mode == "discrete":
            assert len({r.think_end for r in want}) >= 2
            # HF greedy continues through "Final answer:" as ordinary tokens: compare the thinking prefix.
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            hf = model.generate(**enc, do_sample=False, max_new_tokens=40, pad_token_id=tok.pad_token_id)
            for row, res in zip(hf[:, enc.input_ids.shape[1]:].tolist(), want, strict=True):
                assert row[: len(res.think_ids)] == res.think_ids
