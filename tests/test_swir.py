"""SwiReasoning (mode ``swir``): the switching rule on hand-written entropy sequences, the blend schedule,
the switch limit, the reductions to all-latent / all-explicit decoding, and HF ``generate`` greedy."""

from __future__ import annotations

import math

import pytest
import torch
from scripted import ScriptedLM
from test_generator import PROMPTS, hf_tokens, softtok_tokens
from tiny import ARCHS, tiny_model

from softtok.generation import GenerationConfig, SoftThinkingGenerator

LETTERS = "abcdefghijklmnop"


def flat(tokenizer, m: int) -> torch.Tensor:
    """Logits uniform over the first ``m`` letters (entropy ln m), nothing elsewhere (never EOS or </think>)."""
    row = torch.full((len(tokenizer),), -1e4)
    row[tokenizer.convert_tokens_to_ids(list(LETTERS[:m]))] = 0.0
    return row


def swir_rule(entropies: list[float], window: int, start_latent: bool = True) -> tuple[list[bool], list[int]]:
    """The reference's switching loop (sdc17/SwiReasoning, generate_swir), transcribed for one row: per step,
    whether the row is latent after the update, and the steps with a latent-to-explicit switch."""
    latent, stay, ref, flags, to_explicit = start_latent, 0, None, [], []
    for t, h in enumerate(entropies):
        if t == 0:
            ref = h
        else:
            stay += 1
            if latent and h < ref:
                latent, stay, ref = False, 0, h
                to_explicit.append(t)
            elif not latent and h > ref and stay >= window:
                latent, stay, ref = True, 0, h
        flags.append(latent)
    return flags, to_explicit


def run_scripted(tokenizer, widths: list[int], **kwargs):
    """One row (prompt "ab": step t reads script row 1 + t) whose step-t distribution is flat over widths[t] letters."""
    script = torch.stack([flat(tokenizer, 2)] + [flat(tokenizer, m) for m in widths])
    model = ScriptedLM(script, eos_token_id=tokenizer.eos_token_id)
    cfg = GenerationConfig(**{"mode": "swir", "think_end": "</think>", "max_think_tokens": len(widths),
                              "max_answer_tokens": 2, "top_k": 20, "top_p": 1.0, "min_p": 0.0, **kwargs})
    gen = SoftThinkingGenerator(model, tokenizer, cfg)
    return gen.generate(["ab"], seeds=[5])[0], model, script


#: Hand-written widths (entropy ln m) and the modes they give with window 2, starting latent:
#: t0 sets the reference (ln 4); t2 drops (ln 2 < ln 4: explicit); t3 rises but only 1 step in;
#: t4 rises after 2 steps (latent, ref ln 8); t5 drops (explicit, ref ln 3); t6-7 stay above ln 3
#: for 2 steps: latent at t7 (ref ln 6); t8 drops (explicit).
WIDTHS = [4, 4, 2, 8, 8, 3, 5, 6, 2, 2]
EXPECTED = [True, True, False, False, True, False, False, True, False, False]


def test_switches_happen_where_the_rule_says(tokenizer):
    assert swir_rule([math.log(m) for m in WIDTHS], 2)[0] == EXPECTED  # the transcription agrees with the hand
    res, _, _ = run_scripted(tokenizer, WIDTHS, window_size=2)
    assert res.latent == EXPECTED
    assert res.switch_count == 3 and res.latent_segments == [2, 1, 1]
    assert res.latent_fraction == pytest.approx(4 / 10)
    assert res.think_end == "budget" and res.think_tokens == 10
    torch.testing.assert_close(torch.tensor(res.entropy), torch.tensor([math.log(m) for m in WIDTHS]))


@pytest.mark.parametrize("seed", range(6))
def test_random_entropy_sequences_follow_the_reference_loop(tokenizer, seed):
    gen = torch.Generator().manual_seed(seed)
    widths = torch.randint(1, 12, (40,), generator=gen).tolist()
    window = int(torch.randint(1, 5, (1,), generator=gen))
    start_latent = bool(seed % 2)
    res, _, _ = run_scripted(tokenizer, widths, window_size=window, start_mode="latent" if start_latent else "explicit")
    flags, to_explicit = swir_rule([math.log(m) for m in widths], window, start_latent)
    assert res.latent == flags and res.switch_count == len(to_explicit)


def test_blend_coefficients_follow_the_annealing_schedule(tokenizer):
    """The fed inputs, step by step: the mixture (latent), the sampled token (explicit), and at a switch the blend
    alpha_t * mixture + (1 - alpha_t) * E[<think>] or beta_t * mixture + (1 - beta_t) * E[</think>], with
    c_t = c0 + (1 - c0) * t / T."""
    alpha0, beta0, total = 0.3, 0.6, len(WIDTHS)
    res, model, script = run_scripted(tokenizer, WIDTHS, window_size=2, alpha0=alpha0, beta0=beta0,
                                      record_inputs=True)
    weight = model.embed.weight.detach()
    start, end = weight[tokenizer.convert_tokens_to_ids("<think>")], weight[tokenizer.convert_tokens_to_ids("</think>")]
    previous = True
    for t, latent in enumerate(EXPECTED):
        mixture = torch.softmax(script[1 + t], -1) @ weight
        if latent and not previous:
            c = alpha0 + (1 - alpha0) * t / total
            expected = c * mixture + (1 - c) * start
        elif latent:
            expected = mixture
        elif previous:
            c = beta0 + (1 - beta0) * t / total
            expected = c * mixture + (1 - c) * end
        else:
            expected = weight[res.think_ids[t]]
        torch.testing.assert_close(res.cot_inputs[t], expected, atol=1e-6, rtol=1e-5, msg=f"step {t}")
        previous = latent


def test_max_switch_count_forces_think_end(tokenizer):
    """The second latent-to-explicit switch (t5) forces </think> instead: 5 thinking steps, then the answer."""
    res, _, _ = run_scripted(tokenizer, WIDTHS, window_size=2, max_switch_count=2)
    assert res.think_end == "switch_limit" and res.think_tokens == 5
    assert res.latent == EXPECTED[:5] and res.switch_count == 2
    assert res.thinking.endswith("</think>") and res.answer_tokens == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_all_explicit_greedy_equals_hf_generate(arch, tokenizer):
    model = tiny_model(arch)
    expected = hf_tokens(model, tokenizer, PROMPTS, do_sample=False)
    got, results = softtok_tokens(model, tokenizer, PROMPTS, mode="swir", temperature=0.0, start_mode="explicit",
                                  switching=False)
    assert got == expected
    assert all(not any(r.latent) and r.switch_count == 0 for r in results)


def test_all_explicit_sampling_equals_discrete_sampling(tokenizer):
    model = tiny_model("llama")
    kw = dict(temperature=0.6, top_k=20, top_p=0.95, min_p=0.0, max_think_tokens=16, max_answer_tokens=4,
              think_end="</think>")
    seeds = [1, 2, 3, 4]
    cfg = GenerationConfig(mode="swir", start_mode="explicit", switching=False, **kw)
    swir = SoftThinkingGenerator(model, tokenizer, cfg).generate(PROMPTS, seeds=seeds)
    discrete = SoftThinkingGenerator(model, tokenizer, GenerationConfig(mode="discrete", **kw)).generate(
        PROMPTS, seeds=seeds)
    assert [(r.think_ids, r.answer_ids) for r in swir] == [(r.think_ids, r.answer_ids) for r in discrete]


def test_all_latent_feeds_the_untempered_mixture(tokenizer):
    """Switching off, starting latent: every thinking input is softmax(logits) @ E, the input the dense mode feeds
    at temperature 1 (compared step by step on the steps both runs take)."""
    model = tiny_model("llama")
    kw = dict(top_k=0, top_p=1.0, min_p=0.0, max_think_tokens=16, max_answer_tokens=0, think_end="</think>",
              record_inputs=True)
    swir = SoftThinkingGenerator(model, tokenizer, GenerationConfig(mode="swir", switching=False, **kw)).generate(
        PROMPTS, seeds=[1, 2, 3, 4])
    dense = SoftThinkingGenerator(model, tokenizer, GenerationConfig(mode="dense", temperature=1.0, **kw)).generate(
        PROMPTS)
    for a, b in zip(swir, dense, strict=True):
        fed_think_end = a.think_end == "think_end"  # the step that writes think_end feeds that token
        assert all(a.latent[: a.think_tokens - fed_think_end]) and a.switch_count == 0
        n = min(a.think_tokens, b.think_tokens) - 1  # (a step that writes think_end feeds that token instead)
        assert n > 0
        torch.testing.assert_close(a.cot_inputs[:n], b.cot_inputs[:n], atol=1e-6, rtol=1e-5)


def test_swir_rows_are_batch_independent_and_compose_with_compaction(tokenizer):
    """A seeded row gives the same switching and tokens alone and in a batch (rows finishing at different steps
    leave the dynamic cache)."""
    model = tiny_model("llama")
    cfg = GenerationConfig(mode="swir", window_size=3, max_think_tokens=20, max_answer_tokens=4,
                           think_end="</think>", sync_every=2, return_topk=True)
    gen = SoftThinkingGenerator(model, tokenizer, cfg)
    batch = gen.generate(PROMPTS, seeds=[9, 8, 7, 6])
    for i, prompt in enumerate(PROMPTS):
        alone = gen.generate([prompt], seeds=[9 - i])[0]
        assert (alone.think_ids, alone.latent, alone.switch_count, alone.answer_ids) == (
            batch[i].think_ids, batch[i].latent, batch[i].switch_count, batch[i].answer_ids)
    for r in batch:  # recorded mixtures: the latent top-K, or the explicit token as a one-hot
        for latent, ids, weights, shown in zip(r.latent, r.topk_ids, r.topk_weights, r.think_ids, strict=True):
            assert math.isclose(sum(weights), 1.0, rel_tol=1e-5)
            if not latent:
                assert ids[0] == shown and weights[0] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(window_size=0), "window_size=0"),
        (dict(max_switch_count=-1), "max_switch_count=-1"),
        (dict(max_switch_count=0), "max_switch_count=0"),
        (dict(alpha0=1.5), "alpha0=1.5"),
        (dict(beta0=-0.2), "beta0=-0.2"),
        (dict(start_mode="hybrid"), "start_mode='hybrid'"),
        (dict(noise_factor=0.3), "noise_factor=0.3"),
        (dict(width=0, mode="multiplex"), "width=0"),
        (dict(window_size=True), "window_size=True"),
        (dict(switching="no"), "switching='no'"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        GenerationConfig(**{"mode": "swir", **kwargs})


def test_think_start_must_encode_when_it_is_blended(tokenizer):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="think_start='<begin>'"):
        SoftThinkingGenerator(model, tokenizer, GenerationConfig(mode="swir", alpha0=0.5, think_start="<begin>",
                                                                 think_end="</think>"))
    # alpha0 = 1 never blends the marker: any think_start is accepted.
    SoftThinkingGenerator(model, tokenizer, GenerationConfig(mode="swir", think_start="<begin>", think_end="</think>"))


def test_the_example_runs_both_modes_and_reads_them(model_dir, capsys):
    """examples/swir_multiplex_reading.py on a tiny saved model: both modes generate and every read step has a
    nearest vocabulary token."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                        "swir_multiplex_reading.py")
    spec = importlib.util.spec_from_file_location("swir_multiplex_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    readings = example.run(model_dir, steps=3, think_end="</think>", max_think_tokens=8)
    assert set(readings) == {"swir", "multiplex"} and all(len(r) <= 3 for r in readings.values())
    printed = capsys.readouterr().out
    assert "latent fraction" in printed and "nearest by cosine" in printed
