"""Sliding-window and static caches: undoing a cache step, the probe and soft prompts past the window."""

import math

import pytest
import torch
from test_prompts import METHODS, batch, greedy_no_cache, perturb
from tiny import tiny_model, tiny_sliding_model
from transformers import DynamicCache, StaticCache

from softtok.generation import GenerationConfig, SoftThinkingGenerator, restore_cache, snapshot_cache
from softtok.prompts import greedy_generate

WINDOW = 8
LONG = "12+34=46, 5+6=11, 7+8=15, 9+9="  # 30 tokens: well past the window


def make_cache(kind, model, batch_size, length):
    if kind == "dynamic":
        return DynamicCache(config=model.config)
    return StaticCache(config=model.config, max_batch_size=batch_size, max_cache_len=length)


def step(model, ids, cache, start):
    """Feed ``ids`` [B, T] at positions ``start..``: the last position's logits."""
    positions = torch.arange(start, start + ids.shape[1])[None].expand(ids.shape[0], -1)
    out = model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True)
    return out.logits[:, -1]


@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("which", ["llama", "sliding"])
def test_snapshot_restore_undoes_a_step(kind, which, tokenizer):
    """After restore, the cache is as before: the real step equals a run that never saw the alternative,
    and the alternative's logits equal a full recompute without cache. On a full sliding-window layer
    ``Cache.crop`` refuses this."""
    model = tiny_model("llama") if which == "llama" else tiny_sliding_model(WINDOW)
    ids = torch.tensor([tokenizer.encode(LONG, add_special_tokens=False)])
    n = ids.shape[1]
    alt, real = torch.tensor([[5]]), torch.tensor([[9]])
    with torch.no_grad():
        cache = make_cache(kind, model, 1, n + 4)
        step(model, ids, cache, 0)
        before = snapshot_cache(cache)
        saved = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
        for _ in range(2):  # the same snapshot restores twice
            alt_logits = step(model, alt, cache, n)
            restore_cache(cache, before)
            for layer, (k, v) in zip(cache.layers, saved, strict=True):
                assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
        got = step(model, real, cache, n)
        fresh = make_cache(kind, model, 1, n + 4)
        step(model, ids, fresh, 0)
        expected = step(model, real, fresh, n)
        full_alt = model(input_ids=torch.cat([ids, alt], 1)).logits[:, -1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alt_logits, full_alt, atol=1e-4, rtol=1e-4)
    if which == "sliding" and kind == "dynamic":
        with pytest.raises(RuntimeError, match="sliding window"):
            cache.crop(-1)  # what the probe used to do


def test_probe_runs_past_the_window_and_leaves_generation_unchanged(tokenizer):
    """The issue's input: ``"1+1="`` with the probe and 20 thinking tokens on a window of 8."""
    model = tiny_sliding_model(WINDOW)
    kw = dict(mode="soft", max_think_tokens=20, max_answer_tokens=6, think_end="</think>")
    prompts = ["1+1=", LONG]
    plain = SoftThinkingGenerator(model, tokenizer, GenerationConfig(**kw)).generate(prompts)
    probed = SoftThinkingGenerator(model, tokenizer, GenerationConfig(probe=True, **kw)).generate(prompts)
    assert [r.think_ids + r.answer_ids for r in plain] == [r.think_ids + r.answer_ids for r in probed]
    for r in probed:
        assert r.think_tokens == 20
        assert 0.0 <= r.js_top1 <= math.log(2) and 0.0 < r.js_top2 <= math.log(2)


def test_greedy_parity_with_hf_generate_past_the_window(tokenizer):
    """Discrete greedy decoding equals HF ``generate`` token for token on a hybrid sliding-window model,
    left padding included, for 40 tokens past a window of 8."""
    model = tiny_sliding_model(WINDOW)
    prompts = ["1+1=", LONG, "abc"]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=40, do_sample=False, pad_token_id=0, eos_token_id=1)
    expected = []
    for seq in out[:, enc.input_ids.shape[1]:].tolist():
        expected.append(seq[: seq.index(1)] if 1 in seq else seq)
    cfg = GenerationConfig(mode="discrete", temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, think_end="</think>",
                           max_think_tokens=40, max_answer_tokens=40)
    results = SoftThinkingGenerator(model, tokenizer, cfg).generate(prompts)
    assert [(r.think_ids + r.answer_ids)[:40] for r in results] == expected


@pytest.mark.parametrize("method", ["prompt_tuning", "iapt", "iapt_shallow"])
def test_prompt_generation_past_the_window_equals_recompute(method, tokenizer):
    """An instruction-aware prompt on a 30-token prompt (the issue's second input) and its siblings:
    cached generation == recomputing the whole prompted sequence each step."""
    model = tiny_sliding_model(WINDOW)
    prompt = METHODS[method]().build(model, tokenizer)
    perturb(prompt)
    ids, mask = batch(tokenizer, [LONG, "7 + 8 = 15"])
    with torch.no_grad():
        expected = greedy_no_cache(model, prompt, ids, mask, 12)
        got = greedy_generate(model, ids, mask, prefill=prompt, max_new_tokens=12)
    assert got == expected
    cfg = GenerationConfig(mode="discrete", temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, max_think_tokens=12,
                           max_answer_tokens=0, think_end="</think>")
    results = SoftThinkingGenerator(model, tokenizer, cfg).generate([LONG, "7 + 8 = 15"], prefill=prompt)
    think_end = tokenizer.convert_tokens_to_ids("</think>")
    for res, exp in zip(results, expected, strict=True):
        assert res.think_ids == (exp[: exp.index(think_end) + 1] if think_end in exp else exp)


@pytest.mark.slow
def test_real_sliding_window_model_gemma3_270m():
    """Gemma 3 270M (15 of 18 layers slide over 512 tokens), from its optional extra: greedy parity with
    HF ``generate``, and the probe on a prompt + thinking that pass the window."""
    from test_models import require_embedded

    from softtok.models import load_model

    require_embedded("gemma3-270m")
    model, tok = load_model("gemma3-270m")
    assert model.config.sliding_window == 512 and "sliding_attention" in model.config.layer_types
    prompts = ["The capital of France is", "1, 2, 3, 4,"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    expected = [tok.decode(row[enc.input_ids.shape[1]:], skip_special_tokens=True) for row in out]
    cfg = GenerationConfig(mode="discrete", temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, think_end="</think>",
                           max_think_tokens=16, max_answer_tokens=0)
    got = SoftThinkingGenerator(model, tok, cfg).generate([tok.bos_token + p for p in prompts])
    assert [tok.decode(r.think_ids, skip_special_tokens=True) for r in got] == expected

    words = " ".join(f"{i}," for i in range(1, 400))  # ~800 tokens: past the window before thinking starts
    long_prompt = tok.bos_token + "Count on: " + words
    assert len(tok(long_prompt, add_special_tokens=False).input_ids) > 512
    kw = dict(mode="soft", max_think_tokens=24, max_answer_tokens=0, think_end="</think>", return_topk=True)
    plain = SoftThinkingGenerator(model, tok, GenerationConfig(**kw)).generate([long_prompt])
    probed = SoftThinkingGenerator(model, tok, GenerationConfig(probe=True, **kw)).generate([long_prompt])
    assert plain[0].think_ids == probed[0].think_ids and probed[0].think_tokens == 24
    assert 0.0 <= probed[0].js_top1 <= math.log(2) and 0.0 <= probed[0].js_top2 <= math.log(2)


def test_static_cache_prefill_keeps_finished_rows_and_greedy_refuses_a_batch(tokenizer):
    """A static cache cannot drop rows: the engine keeps finished rows in it (masked) and each row equals
    its dynamic-cache result; greedy_generate, which drops finished rows, refuses a batch up front."""
    from softtok.generation import Prefill, plain_prefill

    model = tiny_sliding_model(WINDOW)

    def static_prefill(model, input_ids, attention_mask):
        pre = plain_prefill(model, input_ids, attention_mask)
        pre.cache = StaticCache(config=model.config, max_batch_size=input_ids.shape[0], max_cache_len=80)
        return Prefill(pre.inputs_embeds, pre.attention_mask, pre.position_ids, pre.cache)

    cfg = GenerationConfig(mode="soft", max_think_tokens=20, max_answer_tokens=4, think_end="</think>", probe=True)
    gen = SoftThinkingGenerator(model, tokenizer, cfg)
    (static,) = gen.generate([LONG], prefill=static_prefill)
    (dynamic,) = gen.generate([LONG])
    assert static.think_ids + static.answer_ids == dynamic.think_ids + dynamic.answer_ids
    batched = gen.generate([LONG, "1+1="], prefill=static_prefill)
    assert batched[0].think_ids + batched[0].answer_ids == dynamic.think_ids + dynamic.answer_ids
    (short,) = gen.generate(["1+1="])
    assert batched[1].think_ids + batched[1].answer_ids == short.think_ids + short.answer_ids
    ids, mask = batch(tokenizer, [LONG, "1+1="])
    with pytest.raises(ValueError, match="drops finished rows"):
        greedy_generate(model, ids, mask, prefill=static_prefill, max_new_tokens=3)
