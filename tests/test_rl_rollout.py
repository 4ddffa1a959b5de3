"""Rollouts from the engine (hard, soft, fuzzy) and their recomputed log-probabilities."""

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from softtok.generation import SoftThinkingGenerator
from softtok.rl.rollout import RolloutConfig, generate_rollouts
from softtok.soft.embedding import embedding_rms
from softtok.soft.random import RowRandom, row_seed

PROMPTS = ["hello 1+2", "x", "7 + 8 = 15", "ab"]


def rollouts(mode, model=None, prompts=PROMPTS, seeds=(5, 6, 7, 8), **kw):
    model = model if model is not None else tiny_model("qwen2").double()
    config = RolloutConfig(mode=mode, group_size=2, think_end="a", max_think_tokens=8, max_answer_tokens=3, **kw)
    gen = SoftThinkingGenerator(model, tiny_tokenizer(), config.generation_config())
    return model, config, generate_rollouts(gen, prompts, config, list(seeds))


def test_soft_rollout_is_recomputed_exactly():
    """Every fed input is the recomputed mean plus sigma times the row's own noise draw (seed, step); the step
    whose top-1 wrote think_end and the forced think_end tokens are fed but not counted."""
    model, config, batch = rollouts("soft")
    results = batch.results
    assert {r.think_end for r in results} >= {"budget", "think_end"}
    with torch.no_grad():
        out = batch.log_probs(model, config)
    sigma = batch.sigma
    assert sigma == pytest.approx(0.33 * embedding_rms(model.get_input_embeddings()))
    dim = batch.cot_inputs.shape[-1]
    checked = 0
    for i, r in enumerate(results):
        for j in range(r.think_tokens):
            if batch.cot_weight[i, j] == 0:
                assert r.think_end == "think_end" and j == r.think_tokens - 1 and out.cot[i, j] == 0
                continue
            noise = RowRandom(torch.tensor([batch.seeds[i]]), j).child(0).child(1).normal(dim)[0]
            torch.testing.assert_close(batch.cot_inputs[i, j], out.means[i, j] + sigma * noise, atol=1e-9, rtol=0)
            checked += 1
        counted = batch.answer_weight[i] == 1
        assert counted.sum() == r.answer_tokens and (out.answer[i][~counted] == 0).all()
        assert (out.answer[i][counted] < 0).all()
    assert checked > 10
    # The Gaussian log-density of a fed input is -||noise||^2 / 2 with unit-free noise: around -D/2.
    valid = batch.cot_weight == 1
    assert out.cot[valid].mean().item() == pytest.approx(-dim / 2, rel=0.3)


def test_rows_are_grouped_and_seeded_per_prompt():
    _, config, batch = rollouts("soft")
    assert batch.seeds == [row_seed(s, g) for s in (5, 6, 7, 8) for g in range(2)]
    assert [r.seed for r in batch.results] == batch.seeds
    # A prompt's rollouts are the same alone (float64: see the engine's seeded-row test).
    _, _, alone = rollouts("soft", prompts=PROMPTS[2:3], seeds=(7,))
    assert [r.think_ids for r in alone.results] == [r.think_ids for r in batch.results[4:6]]
    torch.testing.assert_close(alone.cot_inputs[:, :alone.cot_inputs.shape[1]],
                               batch.cot_inputs[4:6, :alone.cot_inputs.shape[1]])


def test_hard_rollout_counts_every_sampled_token():
    model, config, batch = rollouts("hard")
    assert batch.cot_inputs is None and torch.equal(batch.cot_weight, batch.cot_mask)
    with torch.no_grad():
        out = batch.log_probs(model, config)
    assert ((out.cot < 0) == (batch.cot_mask == 1)).all()  # every sampled token has a log-prob, padding none


def test_fuzzy_inputs_are_nearly_one_hot():
    """tau = 1e-4: the mean is the top-1 token's embedding (the noise aside)."""
    model, config, batch = rollouts("fuzzy")
    embed = model.get_input_embeddings()
    with torch.no_grad():
        out = batch.log_probs(model, config)
    for i, r in enumerate(batch.results):
        n = r.think_tokens
        torch.testing.assert_close(out.means[i, :n], embed(torch.tensor(r.think_ids)), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kw", "match"), [
    (dict(mode="latent"), "mode='latent' is unknown"),
    (dict(mode="soft", noise_factor=0.0), "noise_factor=0.0 must be > 0 in mode 'soft'"),
    (dict(group_size=0), "group_size=0 must be an integer >= 1"),
    (dict(temperature=0.0), "temperature=0.0 must be > 0"),
    (dict(max_think_tokens=0), "max_think_tokens=0"),
])
def test_bad_rollout_config(kw, match):
    with pytest.raises(ValueError, match=match):
        RolloutConfig(**kw)


def test_generator_with_other_settings_is_refused():
    model = tiny_model("llama")
    config = RolloutConfig(mode="soft", group_size=2)
    gen = SoftThinkingGenerator(model, tiny_tokenizer(), RolloutConfig(mode="fuzzy").generation_config())
    with pytest.raises(ValueError, match="other settings"):
        generate_rollouts(gen, PROMPTS, config, [1, 2, 3, 4])
    gen = SoftThinkingGenerator(model, tiny_tokenizer(), config.generation_config())
    with pytest.raises(ValueError, match="seeds has 1 values for 4 prompts"):
        generate_rollouts(gen, PROMPTS, config, [1])


def test_static_cache_rollouts_equal_dynamic_ones():
    """The engine's static KV cache changes the speed of rollouts, not the rollouts."""
    model = tiny_model("llama").double()
    _, _, dynamic = rollouts("soft", model=model)
    _, _, static = rollouts("soft", model=model, cache="static")
    assert [r.think_ids for r in static.results] == [r.think_ids for r in dynamic.results]
    assert [r.answer_ids for r in static.results] == [r.answer_ids for r in dynamic.results]
    torch.testing.assert_close(static.cot_inputs, dynamic.cot_inputs, atol=1e-10, rtol=0)
    assert static.max_length == dynamic.max_length == 8 + 1 + 3  # budgets + the one-token think_end


def test_evaluation_modes():
    soft = RolloutConfig(mode="soft", noise_factor=0.5, top_k=5, answer_temperature=0.7)
    hard_greedy = soft.eval_generation_config("hard_greedy")
    assert (hard_greedy.mode, hard_greedy.temperature, hard_greedy.answer_temperature) == ("discrete", 0.0, 0.0)
    hard_sampled = soft.eval_generation_config("hard_sampled")
    assert (hard_sampled.temperature, hard_sampled.answer_temperature, hard_sampled.top_k) == (1.0, 0.7, 0)
    soft_greedy = soft.eval_generation_config("soft_greedy")
    assert (soft_greedy.mode, soft_greedy.temperature, soft_greedy.noise_factor, soft_greedy.top_k,
            soft_greedy.answer_temperature) == ("dense", 0.5, 0.0, 5, 0.0)
    # The sampled soft mode is the training policy itself, less the input recording.
    training = soft.generation_config()
    assert soft.eval_generation_config("soft_sampled") == type(training)(**{**training.__dict__,
                                                                           "record_inputs": False})
    assert RolloutConfig(mode="hard").eval_generation_config("soft_greedy").temperature == 0.5
    assert RolloutConfig(mode="fuzzy").eval_generation_config("soft_greedy").temperature == 1e-4
    with pytest.raises(ValueError, match="evaluation mode 'greedy' is unknown; allowed: hard_greedy"):
        soft.eval_generation_config("greedy")


def test_token_log_probs_are_at_the_sampling_temperatures():
    """Hard CoT tokens are scored at tau and answer tokens at answer_temperature: the distributions sampled."""
    model, config, batch = rollouts("hard", temperature=0.5, answer_temperature=0.7)
    with torch.no_grad():
        out = batch.log_probs(model, config)
        counted = batch.answer_weight == 1
        expected = torch.log_softmax(out.answer_logits / 0.7, -1).gather(-1, batch.answer_ids[..., None])[..., 0]
        torch.testing.assert_close(out.answer[counted], expected[counted])
        at_one = batch.log_probs(model, RolloutConfig(**{**config.__dict__, "temperature": 1.0,
                                                         "answer_temperature": 1.0}))
    assert not torch.allclose(out.cot, at_one.cot) and not torch.allclose(out.answer, at_one.answer)
    with pytest.raises(ValueError, match="answer_temperature=0.0 must be > 0"):
        RolloutConfig(answer_temperature=0.0)
    assert RolloutConfig(mode="hard", temperature=0.8).eval_generation_config("hard_sampled").temperature == 0.8
