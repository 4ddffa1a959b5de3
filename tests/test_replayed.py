"""Replayed public bug reports (PEFT, transformers, TRL, Math-Verify, the Soft Thinking engine) that softtok
passed, kept as regression tests where the rest of the suite does not already cover them.

Each test has an independent oracle: each row generated alone (unpadded), a full recompute without
the KV cache, the fp32 model, or a value computed by hand / with ``math.comb``.
"""

import copy
import math
from fractions import Fraction

import pytest
import torch
from scripted import ScriptedLM, peaked
from test_prompts import METHODS, batch, greedy_no_cache, perturb
from tiny import SPECIALS, tiny_model, tiny_tokenizer
from transformers import DynamicCache

from softtok.answers import check_answer
from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.generation.prefill import prefill_logits
from softtok.metrics import PassAtK, SoftThinkingMetrics, pass_at_k
from softtok.metrics.passk import pass_at_k_table
from softtok.prompts import greedy_generate

TEXTS = ["hello 1+2", "x", "7 + 8 = 15", "ab"]  # different lengths: the batch is left-padded
PAD_ARCHS = ["llama", "gpt2"]  # rotary vs learned absolute positions


def discrete_config(**kw):
    return GenerationConfig(**{"mode": "discrete", "temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                               "max_think_tokens": 8, "max_answer_tokens": 4, **kw})


def outputs(results):
    return [(r.think_ids, r.answer_ids, r.think_end, r.think_tokens, r.answer_tokens) for r in results]


def alone(generator, texts, **kw):
    return [generator.generate([t], **kw)[0] for t in texts]


# ------------------------------------------------------------------ 1. left padding
@pytest.mark.parametrize("arch", PAD_ARCHS)
@pytest.mark.parametrize("config", [
    discrete_config(),
    GenerationConfig(mode="soft", temperature=0.01, max_think_tokens=8, max_answer_tokens=4),
    GenerationConfig(mode="soft", max_think_tokens=8, max_answer_tokens=4),  # the default (T=0.6) soft mixture
], ids=["discrete_greedy", "soft_T0.01", "soft_T0.6"])
def test_generator_left_padded_batch_equals_each_row_alone(arch, config, tokenizer):
    """HF issues on left padding (wrong positions / mask for the padded rows): a left-padded batch
    generates, per row, exactly what the row generates alone without padding."""
    model = tiny_model(arch)
    gen = SoftThinkingGenerator(model, tokenizer, config)
    batched = gen.generate(TEXTS)
    single = alone(gen, TEXTS)
    assert outputs(batched) == outputs(single)
    for b, s in zip(batched, single, strict=True):
        assert b.entropy == pytest.approx(s.entropy, abs=1e-4)
    # Token ids as input pad the same way as text.
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in TEXTS]
    assert outputs(gen.generate(ids)) == outputs(single)


def test_generator_refuses_right_padding():
    tok = tiny_tokenizer()
    tok.padding_side = "right"
    gen = SoftThinkingGenerator(tiny_model("llama"), tok, discrete_config())
    for prompts in (TEXTS, [tok(t, add_special_tokens=False).input_ids for t in TEXTS]):
        with pytest.raises(ValueError, match=r"must pad on the left .*padding_side='left'"):
            gen.generate(prompts)
    tok.padding_side = "left"
    assert len(gen.generate(TEXTS)) == len(TEXTS)


@pytest.mark.parametrize("arch", PAD_ARCHS)
@pytest.mark.parametrize("method", list(METHODS))
def test_prompt_generation_left_padded_equals_each_row_alone(arch, method, tokenizer):
    """Soft prompts with left padding (PEFT puts virtual tokens before the padding and shifts the
    positions): greedy_generate and the generator with ``prefill=prompt`` give each row its unpadded output."""
    model = tiny_model(arch)
    prompt = METHODS[method]().build(model, tokenizer)
    perturb(prompt)
    ids, mask = batch(tokenizer, TEXTS)
    assert (mask == 0).any()
    got = greedy_generate(model, ids, mask, prefill=prompt, max_new_tokens=8)
    for i, text in enumerate(TEXTS):
        one_ids, one_mask = batch(tokenizer, [text])
        assert got[i] == greedy_generate(model, one_ids, one_mask, prefill=prompt, max_new_tokens=8)[0], text
    gen = SoftThinkingGenerator(model, tokenizer, discrete_config(max_think_tokens=6, max_answer_tokens=3))
    assert outputs(gen.generate(TEXTS, prefill=prompt)) == outputs(alone(gen, TEXTS, prefill=prompt))


# ------------------------------------------------------------------ 2. half precision
HALF = [torch.bfloat16, torch.float16]
HALF_ATOL = {torch.bfloat16: 0.3, torch.float16: 0.05}  # measured max |diff| ~0.15 / ~0.02; logits span ~+-6


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "prefix_mlp", "iapt"])
def test_half_precision_prompt_trains_and_matches_fp32(method, dtype, tokenizer):
    """PEFT/TRL reports: prompts on a bf16/fp16 model gave dtype errors, NaN losses, or no gradient to the
    fp32 prompt weights. Loss and logits match the fp32 model within half-precision tolerance; gradients
    are fp32, finite and point the same way as the fp32 ones; generation runs."""
    model32 = tiny_model("llama")
    prompt = METHODS[method]().build(model32, tokenizer)
    perturb(prompt)
    model = copy.deepcopy(model32).to(dtype)
    assert all(p.dtype == torch.float32 for p in prompt.parameters())
    ids, mask = batch(tokenizer, TEXTS, "right")
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100

    with torch.no_grad():
        logits, logits32 = prompt.logits(model, ids, mask), prompt.logits(model32, ids, mask)
        plain = model32(input_ids=ids, attention_mask=mask).logits
    assert logits.dtype == dtype
    real = mask.bool()
    torch.testing.assert_close(logits.float()[real], logits32[real], atol=HALF_ATOL[dtype], rtol=0.0)
    assert (plain - logits32)[real].abs().max() > 10 * HALF_ATOL[dtype]  # the tolerance would see a lost prompt

    grads = []
    for m in (model, model32):
        m.requires_grad_(False)
        prompt.zero_grad()
        loss = prompt.loss(m, ids, mask, labels)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in prompt.named_parameters()}))
    (loss, g), (loss32, g32) = grads
    assert float(loss) == pytest.approx(float(loss32), rel=0.02)
    for name, grad in g.items():
        assert grad is not None and grad.dtype == torch.float32, name
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        if g32[name].norm() > 1e-6:
            cos = torch.nn.functional.cosine_similarity(grad.flatten(), g32[name].flatten(), dim=0)
            assert cos > 0.95, (name, float(cos))

    ids_l, mask_l = batch(tokenizer, TEXTS)
    with torch.no_grad():
        out = greedy_generate(model, ids_l, mask_l, prefill=prompt, max_new_tokens=4)
    assert [len(row) for row in out] == [4] * len(TEXTS)  # no EOS given: the full budget
    assert all(0 <= t < model.config.vocab_size for row in out for t in row)
    res = SoftThinkingGenerator(model, tokenizer, GenerationConfig(max_think_tokens=4, max_answer_tokens=2)).generate(
        TEXTS, prefill=prompt)
    assert len(res) == len(TEXTS) and all(all(math.isfinite(e) for e in r.entropy) for r in res)


# ------------------------------------------------------------------ 3. pass@k edge cases
def exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize(("n", "c", "k"), [
    (1, 0, 1), (1, 1, 1), (7, 0, 7), (7, 7, 7), (7, 1, 7), (7, 3, 7), (7, 0, 1), (7, 7, 1),
    (200, 0, 100), (200, 1, 100), (200, 3, 100), (200, 50, 100), (200, 100, 100), (200, 101, 100),
    (200, 200, 100), (200, 1, 1), (200, 199, 200), (200, 0, 200), (1000, 2, 500), (2000, 5, 1000),
])
def test_pass_at_k_edge_cases_match_math_comb(n, c, k):
    """Reports of pass@k NaN / overflow for large n (products of falling factorials overflow float64 near
    n = 1000, k = 500; C(2000, 1000) is not even representable) and of wrong values at c = 0, c = n, k = n,
    n = 1: the estimator equals the exact rational value."""
    got = pass_at_k(n, c, k)
    assert math.isfinite(got) and 0.0 <= got <= 1.0
    assert got == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-12, abs=1e-15)


def test_pass_at_k_k_above_n_names_the_problem():
    with pytest.raises(ValueError, match=r"pass_at_k: k=6 must lie in \[1, n=5\] \(cannot estimate pass@6 from 5"):
        pass_at_k(5, 2, 6)
    with pytest.raises(ValueError, match=r"pass@3 needs >= 3 samples .*problem 7 has 2"):
        pass_at_k_table(torch.tensor([7, 7, 8, 8, 8]), torch.tensor([1, 0, 0, 0, 1]), ks=(1, 3))


def test_pass_at_k_table_large_n_and_spread_batches():
    """n = 200 samples per problem, given in shuffled batches: the table equals the per-problem exact mean."""
    gen = torch.Generator().manual_seed(0)
    counts = {0: 0, 1: 1, 2: 37, 3: 200}  # correct samples of 200
    rows = [(p, s, s < c) for p, c in counts.items() for s in range(200)]
    order = torch.randperm(len(rows), generator=gen).tolist()
    metric = PassAtK(ks=(1, 10, 100, 200))
    for chunk in range(0, len(order), 97):  # batches that split every problem
        part = [rows[i] for i in order[chunk:chunk + 97]]
        metric.update([r[0] for r in part], [r[2] for r in part], sample_ids=[r[1] for r in part])
    out = metric.compute()
    for k in (1, 10, 100, 200):
        expected = sum(float(exact_pass_at_k(200, c, k)) for c in counts.values()) / len(counts)
        assert out[f"pass@{k}"] == pytest.approx(expected, rel=1e-12), k
        assert math.isfinite(out[f"pass@{k}"])


def test_pass_at_k_distributed_sampler_padding_counted_once():
    """``DistributedSampler`` pads 7 rows to 8 over 2 ranks by repeating row 0: merged over ranks, the
    repeat counts once (without sample ids it would count twice)."""
    from torch.utils.data import DistributedSampler

    # (problem, sample, correct): problem 0 has 3 samples (1 correct), problem 1 has 4 (2 correct)
    data = [(0, 0, True), (0, 1, False), (0, 2, False), (1, 0, True), (1, 1, True), (1, 2, False), (1, 3, False)]
    ranks = []
    for rank in range(2):
        idx = list(DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False))
        metric = PassAtK(ks=(1, 3))
        for start in range(0, len(idx), 2):  # two batches per rank
            part = [data[i] for i in idx[start:start + 2]]
            metric.update([d[0] for d in part], [d[2] for d in part], sample_ids=[d[1] for d in part])
        ranks.append((idx, metric))
    assert len(ranks[0][0]) + len(ranks[1][0]) == 8 and (ranks[0][0] + ranks[1][0]).count(0) == 2
    ranks[0][1].merge_state(ranks[1][1])
    expected = {"pass@1": (1 / 3 + 2 / 4) / 2, "pass@3": (1.0 + float(exact_pass_at_k(4, 2, 3))) / 2}
    assert ranks[0][1].compute() == pytest.approx(expected)
    # The oracle would differ if the padding row were counted: problem 0 would be 2 correct of 4.
    assert pass_at_k(4, 2, 1) != pytest.approx(1 / 3)


# ------------------------------------------------------------------ 4. NaN / None scores
@pytest.mark.parametrize("score", [float("nan"), None, "nan", float("-inf"), "oops", [1.0]],
                         ids=["nan", "none", "nan_str", "-inf", "bad_str", "list"])
def test_scorer_nan_none_or_garbage_counts_wrong(score):
    """Math-Verify / reasoning-gym reports: a scorer returning NaN or None crashed the run or (NaN compares
    oddly) counted as correct. It is wrong, never an exception."""
    calls = []

    def scorer(answer):
        calls.append(answer)
        return score

    assert check_answer("156", "156", scorer=scorer) is False
    assert calls  # the scorer was really asked


def test_scorer_not_called_for_a_missing_prediction():
    calls = []
    always = lambda answer: calls.append(answer) or 1.0
    assert check_answer(None, "156", scorer=always) is False
    assert check_answer(None, "156") is False
    assert not calls
    assert check_answer("156", "x", scorer=always) is True  # the same scorer does accept a real answer


def test_scorer_nan_then_one_on_another_form():
    """A NaN on the raw text does not hide a 1.0 on a trivially equivalent form (the next candidate)."""
    scorer = lambda answer: 1.0 if answer == "156" else float("nan")
    assert check_answer(" 156. ", "x", scorer=scorer) is True


def _record(problem, entropy, js=None, sample=0, correct=True, think_end="think_end"):
    return {"problem": problem, "sample": sample, "correct": correct, "think_tokens": 0 if entropy is None else 3,
            "answer_tokens": 1, "think_end": think_end, "mean_entropy": entropy, "js_top1": js, "js_top2": js}


def test_metrics_with_no_soft_step_records():
    """Records without entropy / JS values (the row ended before any soft step) are left out of the entropy
    mean (never NaN while one record has a value) and never break the other averages."""
    metric = SoftThinkingMetrics(ks=(1, 2))
    metric.update([_record(0, None, think_end="eos"), _record(0, 0.5, js=0.1, sample=1, correct=False)])
    metric.update([_record(1, None, think_end="eos", correct=False), _record(1, float("nan"), sample=1)])
    out = metric.compute()
    assert out["mean_entropy"] == pytest.approx(0.5)
    assert out["accuracy"] == pytest.approx(0.5) and out["pass@2"] == pytest.approx(1.0)
    assert out["mean_think_tokens"] == pytest.approx(6 / 4) and out["eos_rate"] == pytest.approx(0.5)
    assert all(math.isfinite(v) for v in out.values())
    # Nothing measured at all: the entropy mean is undefined (NaN, as documented), everything else is finite.
    only_none = SoftThinkingMetrics()
    only_none.update([_record(0, None, think_end="eos"), _record(1, None, think_end="eos", correct=False)])
    out = only_none.compute()
    assert math.isnan(out["mean_entropy"])
    assert all(math.isfinite(v) for k, v in out.items() if k != "mean_entropy")
    assert out["accuracy"] == pytest.approx(0.5) and out["eos_rate"] == 1.0


def test_module_records_of_rows_without_soft_steps_feed_the_metrics(tokenizer):
    """End to end through SoftThinkingModule: a row whose first top-1 is EOS (no thinking step) and a row
    that thinks a few steps; with the probe on. The first record has mean_entropy/js None, the metrics
    average only the second."""
    from softtok.modules.soft_thinking import SoftThinkingModule

    a, b, eos, end = tokenizer.convert_tokens_to_ids(["a", "b", "<eos>", "</think>"])
    q1, q2 = "1", "123"  # prompt lengths L and L + 2
    module = SoftThinkingModule(model="unused", system_prompt=None,
                                generation=dict(mode="soft", max_topk=2, probe=True, max_think_tokens=6,
                                                max_answer_tokens=2))
    length = len(tokenizer(module._format(tokenizer, q1), add_special_tokens=False).input_ids)
    script = [peaked(len(tokenizer), a) for _ in range(length + 20)]
    script[length - 1] = peaked(len(tokenizer), eos)  # row 1's first step
    script[length + 1] = torch.zeros(len(tokenizer))  # row 2's first step: a near 50/50 mixture of a and b
    script[length + 1][[a, b]] = torch.tensor([5.0, 4.9])
    script[length + 4] = peaked(len(tokenizer), end)
    lm = ScriptedLM(torch.stack(script))
    module._modules["lm"], module._tokenizer = lm, tokenizer
    module._generator = SoftThinkingGenerator(lm, tokenizer, module.generation)
    records = module.run([{"index": 0, "question": q1, "answer": "1"}, {"index": 1, "question": q2, "answer": "9"}])
    assert records[0]["think_end"] == "eos" and records[0]["think_tokens"] == 0
    assert records[0]["mean_entropy"] is None and records[0]["js_top1"] is None and records[0]["correct"] is False
    assert records[1]["think_tokens"] > 0 and 0.1 < records[1]["mean_entropy"] < 0.5  # ~log 2 over 4 steps
    assert records[1]["js_top1"] is not None and math.isfinite(records[1]["js_top1"])
    module.metrics.update([{**r, "problem": r["index"]} for r in records])
    out = module.metrics.compute()
    assert out["mean_entropy"] == pytest.approx(records[1]["mean_entropy"])
    assert all(math.isfinite(v) for v in out.values())


# ------------------------------------------------------------------ 5. shrinking batches with prefixes
def truncate(row, stop):
    return row[: row.index(stop)] if stop in row else row


def pick_eos(rows):
    """A character token that ends the rows at clearly different steps (one row early, another much later
    or never)."""
    best = None
    for t in sorted({t for r in rows for t in r[1:5] if t >= len(SPECIALS)}):
        ends = [r.index(t) if t in r else len(r) for r in rows]
        if min(ends) >= 1 and max(ends) - min(ends) >= 3 and len(set(ends)) >= 2:
            spread = (len(set(ends)), max(ends) - min(ends))
            if best is None or spread > best[0]:
                best = (spread, t)
    assert best is not None, "no token ends the rows at different steps; change TEXTS or the seed"
    return best[1]


@pytest.fixture
def count_batch_select(monkeypatch):
    calls = []
    original = DynamicCache.batch_select_indices

    def spy(self, indices):
        calls.append(indices.tolist())
        return original(self, indices)

    monkeypatch.setattr(DynamicCache, "batch_select_indices", spy)
    return calls


@pytest.mark.parametrize(("arch", "method"), [
    ("llama", "prefix_tuning"), ("llama", "prefix_mlp"), ("gpt2", "prefix_tuning"), ("qwen2", "prefix_tuning"),
    ("llama", "prompt_tuning"), ("llama", "iapt"),
])
def test_rows_leaving_a_prefix_cache_keep_the_other_rows_exact(arch, method, tokenizer, count_batch_select):
    """PEFT/transformers reports: dropping finished rows from a cache that holds prefix keys mixed the rows
    up (or dropped the prefix). Rows ending at different steps: each remaining row's output equals a full
    recompute without cache and the row generated alone."""
    model = tiny_model(arch)
    prompt = METHODS[method]().build(model, tokenizer)
    perturb(prompt)
    ids, mask = batch(tokenizer, TEXTS)
    steps = 12
    with torch.no_grad():
        recompute = greedy_no_cache(model, prompt, ids, mask, steps)
    eos = pick_eos(recompute)
    expected = [truncate(r, eos) for r in recompute]
    count_batch_select.clear()
    got = greedy_generate(model, ids, mask, prefill=prompt, max_new_tokens=steps, eos_token_ids=[eos])
    assert got == expected
    assert count_batch_select and len(count_batch_select[0]) < len(TEXTS)  # rows really left mid-way
    assert len({len(r) for r in got}) >= 2
    for i, text in enumerate(TEXTS):
        one_ids, one_mask = batch(tokenizer, [text])
        assert greedy_generate(model, one_ids, one_mask, prefill=prompt, max_new_tokens=steps,
                               eos_token_ids=[eos])[0] == expected[i]

    # The generator: the same token as think_end (max_answer_tokens=0) ends rows at different steps.
    think_end = tokenizer.decode([eos])
    count_batch_select.clear()
    gen = SoftThinkingGenerator(model, tokenizer, discrete_config(think_end=think_end, max_think_tokens=steps,
                                                                  max_answer_tokens=0, sync_every=1))
    results = gen.generate(TEXTS, prefill=prompt)
    assert count_batch_select and len(count_batch_select[0]) < len(TEXTS)
    for res, row in zip(results, recompute, strict=True):
        row = truncate(row, 1)  # the model's EOS ends a row too (not included)
        ends = [j for j, t in enumerate(row) if think_end in tokenizer.decode([t])]  # think_end included
        assert res.think_ids == (row[: ends[0] + 1] if ends else row)


@pytest.mark.parametrize("method", ["prefix_tuning", "prefix_mlp"])
def test_batch_select_on_a_prefix_cache_equals_the_selected_rows(method, tokenizer):
    """Directly: selecting rows (reordered) of a cache built with prefixes, then one step, gives those
    rows' logits of the unselected batch."""
    model = tiny_model("qwen2")
    prompt = METHODS[method]().build(model, tokenizer)
    perturb(prompt)
    ids, mask = batch(tokenizer, TEXTS)
    logits_steps = []
    for select in (None, [2, 0]):
        with torch.no_grad():
            pre = prompt(model, ids, mask)
            token = prefill_logits(model, pre).argmax(-1)
            cache, step_mask, pos = pre.cache, pre.attention_mask, pre.position_ids[:, -1] + 1
            assert cache.get_seq_length() == prompt.n_virtual + ids.shape[1]
            if select is not None:
                index = torch.tensor(select)
                cache.batch_select_indices(index)
                token, step_mask, pos = token[index], step_mask[index], pos[index]
            step_mask = torch.cat([step_mask, step_mask.new_ones(step_mask.shape[0], 1)], 1)
            out = model(inputs_embeds=model.get_input_embeddings()(token)[:, None], attention_mask=step_mask,
                        position_ids=pos[:, None], cache=cache, use_cache=True).logits[:, -1]
        logits_steps.append(out)
    full, selected = logits_steps
    torch.testing.assert_close(selected, full[[2, 0]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[2], full[0], atol=1e-3)  # a row mix-up would show
