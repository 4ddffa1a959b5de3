"""The Soft Thinking decode loop against Hugging Face ``generate`` and scripted event sequences."""

import math

import pytest
import torch
from scripted import ScriptedLM, peaked
from tiny import ARCHS, tiny_model

from softtok.generation import GenerationConfig, SoftThinkingGenerator

PROMPTS = ["ab", "hello world 12", "x", "7 + 8 ="]  # different lengths: left padding matters
N = 24


def hf_tokens(model, tokenizer, prompts, **kwargs):
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=N, pad_token_id=0, eos_token_id=1, **kwargs)
    rows = []
    for seq in out[:, enc.input_ids.shape[1]:].tolist():
        rows.append(seq[: seq.index(1)] if 1 in seq else seq)
    return rows


def softtok_tokens(model, tokenizer, prompts, **kwargs):
    cfg = GenerationConfig(max_think_tokens=N, max_answer_tokens=N, think_end="</think>", **kwargs)
    results = SoftThinkingGenerator(model, tokenizer, cfg).generate(prompts)
    return [(r.think_ids + r.answer_ids)[:N] for r in results], results


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["soft", "discrete"])
def test_one_component_equals_hf_greedy(arch, mode, tokenizer):
    """Soft thinking with max_topk=1 (and discrete greedy) reproduce HF greedy token for token."""
    model = tiny_model(arch)
    expected = hf_tokens(model, tokenizer, PROMPTS, do_sample=False)
    filters = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0) if mode == "discrete" else dict(
        temperature=0.6, top_k=30, top_p=0.95, min_p=0.001)
    got, _ = softtok_tokens(model, tokenizer, PROMPTS, mode=mode, max_topk=1, **filters)
    assert got == expected


def scripted(tokens_by_position, vocab=8, flat=()):
    script = torch.stack([peaked(vocab, t) for t in tokens_by_position])
    for p in flat:
        script[p] = 0.0
    return ScriptedLM(script)


def run(model, tokenizer, prompts, **kwargs):
    kwargs = {"mode": "soft", "think_end": "</think>", **kwargs}
    return SoftThinkingGenerator(model, tokenizer, GenerationConfig(**kwargs)).generate(prompts)


def test_rows_end_differently_and_keep_input_order(tokenizer):
    # The logits at position p (predicting token p + 1) put their mass on script[p], and a
    # prompt of length L generates its first token from position L - 1.
    a, eos, end = tokenizer.convert_tokens_to_ids(["a", "<eos>", "</think>"])
    model = scripted([a, a, a, end, a, a, eos] + [a] * 20, vocab=len(tokenizer))
    prompts = ["aaaaaaaa", "aaa", "aaaaa"]  # first tokens from positions 7, 2, 4
    budget, think_end, eos_row = run(model, tokenizer, prompts, max_think_tokens=4, max_answer_tokens=3)
    assert (think_end.think_end, think_end.thinking, think_end.answer) == ("think_end", "a</think>", "aa")
    assert (think_end.think_tokens, think_end.answer_tokens) == (2, 2)  # the answer ends at EOS
    assert (eos_row.think_end, eos_row.think_tokens, eos_row.answer_tokens) == ("eos", 2, 0)
    assert (budget.think_end, budget.think_tokens, budget.answer_tokens) == ("budget", 4, 3)
    assert budget.thinking == "aaaa</think>" and budget.answer == "aaa"


def test_cold_stop_fires_after_n_low_entropy_steps(tokenizer):
    a = tokenizer.convert_tokens_to_ids("a")
    # Steps read positions 0, 1, 2, ...: low, low, flat (resets the run), low, low, low -> the
    # third consecutive low step (position 5) is replaced by the forced think-end token.
    model = scripted([a] * 30, vocab=len(tokenizer), flat=(2,))
    (res,) = run(model, tokenizer, ["a"], cold_stop_entropy=0.01, cold_stop_length=3, max_think_tokens=20,
                 max_answer_tokens=2)
    assert res.think_end == "cold_stop"
    assert res.think_tokens == 5
    assert res.entropy[2] > 1.0 and max(res.entropy[:2] + res.entropy[3:]) < 0.01
    assert res.thinking.endswith("aa</think>") and res.answer_tokens == 2


def test_cold_stop_off_by_default(tokenizer):
    a = tokenizer.convert_tokens_to_ids("a")
    (res,) = run(scripted([a] * 30, vocab=len(tokenizer)), tokenizer, ["a"], max_think_tokens=10,
                 max_answer_tokens=1)
    assert res.think_end == "budget" and res.think_tokens == 10


def test_multi_token_think_end_detected_on_text(tokenizer):
    ids = tokenizer.encode("aFinal:b", add_special_tokens=False)
    model = scripted(ids + [ids[-1]] * 10, vocab=len(tokenizer))
    (res,) = run(model, tokenizer, ["a"], think_end="Final:", max_answer_tokens=2)
    assert res.think_end == "think_end" and res.thinking == "aFinal:" and res.answer == "bb"


def test_probe_js_is_zero_for_near_one_hot_inputs(tokenizer):
    model = tiny_model("llama")
    cfg = GenerationConfig(mode="soft", temperature=1e-4, max_topk=2, probe=True, max_think_tokens=6,
                           max_answer_tokens=0)
    res = SoftThinkingGenerator(model, tokenizer, cfg).generate(PROMPTS)
    for r in res:
        assert r.js_top1 == pytest.approx(0.0, abs=1e-6)
        assert 0.0 <= r.js_top2 <= math.log(2) + 1e-6


def test_probe_leaves_generation_unchanged(tokenizer):
    model = tiny_model("qwen2")
    kw = dict(mode="soft", max_topk=5, max_think_tokens=8, max_answer_tokens=4, return_topk=True)
    plain = SoftThinkingGenerator(model, tokenizer, GenerationConfig(**kw)).generate(PROMPTS)
    probed = SoftThinkingGenerator(model, tokenizer, GenerationConfig(probe=True, **kw)).generate(PROMPTS)
    assert [r.think_ids + r.answer_ids for r in plain] == [r.think_ids + r.answer_ids for r in probed]
    assert all(r.js_top2 is not None and r.js_top2 > 0 for r in probed)
    assert all(len(r.topk_ids[0]) == 5 and abs(sum(r.topk_weights[0]) - 1) < 1e-5 for r in plain)


@pytest.mark.parametrize("mode", ["dirichlet", "gumbel", "moi"])
def test_random_modes_reproducible_with_seed(mode, tokenizer):
    model = tiny_model("llama")
    cfg = GenerationConfig(mode=mode, max_think_tokens=10, max_answer_tokens=4, noise_factor=0.33)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        results = SoftThinkingGenerator(model, tokenizer, cfg).generate(PROMPTS)
        outs.append([r.think_ids + r.answer_ids for r in results])
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(think_end="é"), "think_end='é' cannot be encoded"),
        (dict(max_think_tokens=0), "max_think_tokens=0"),
        (dict(mode="beam"), "mode='beam' is unknown"),
        (dict(temperature=-1.0), "temperature=-1.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(answer_temperature=-0.5), "answer_temperature=-0.5"),
        (dict(probe=True, mode="discrete", temperature=0.0), "probe=True"),
        (dict(stop_strings=("",)), r"stop_strings=\(''.*\) must be a list of non-empty strings"),
        (dict(stop_strings="Final"), "stop_strings='Final' must be a list of non-empty strings"),
        (dict(stop_strings=("\n", None)), "must be a list of non-empty strings"),
        (dict(think_end=""), "think_end='' must be a non-empty string"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, match, tokenizer):
    with pytest.raises(ValueError, match=match):
        SoftThinkingGenerator(tiny_model("llama"), tokenizer, GenerationConfig(**kwargs))


def test_custom_mixer_overrides_the_mode(tokenizer):
    from softtok.soft import TopKMixer

    model = tiny_model("llama")
    expected = hf_tokens(model, tokenizer, PROMPTS, do_sample=False)
    cfg = GenerationConfig(mode="soft", max_topk=10, max_think_tokens=N, max_answer_tokens=N)
    results = SoftThinkingGenerator(model, tokenizer, cfg, mixer=TopKMixer(1)).generate(PROMPTS)
    assert [(r.think_ids + r.answer_ids)[:N] for r in results] == expected


def test_stop_strings_list_becomes_a_tuple():
    assert GenerationConfig(stop_strings=["\n", "Q:"]).stop_strings == ("\n", "Q:")


def test_the_custom_mixer_example_runs_in_the_engine(tokenizer):
    """examples/soft_thinking_custom_mixer.py's mixer plugs into the generator (a mixer API change breaks this)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                        "soft_thinking_custom_mixer.py")
    spec = importlib.util.spec_from_file_location("custom_mixer_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    cfg = GenerationConfig(mode="soft", max_think_tokens=6, max_answer_tokens=2, return_topk=True)
    results = SoftThinkingGenerator(tiny_model("llama"), tokenizer, cfg, mixer=example.PowerMixer(10, 3.0)).generate(
        PROMPTS)
    base = SoftThinkingGenerator(tiny_model("llama"), tokenizer, cfg).generate(PROMPTS)
    assert all(r.think_tokens > 0 for r in results)
    # gamma > 1 sharpens: the top weight grows over vanilla Soft Thinking's at the first step.
    assert results[0].topk_weights[0][0] > base[0].topk_weights[0][0]
