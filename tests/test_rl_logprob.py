"""Rollout log-probabilities by one teacher-forced pass, against a step-by-step decode and finite differences."""

import pytest
import torch
from tiny import ARCHS, tiny_model, tiny_tokenizer
from transformers import DynamicCache

from softtok.generation.prefill import positions_from_mask
from softtok.rl.logprob import GaussianDensity, cot_means, rollout_log_probs

TAU = 0.5


def decode_row(model, prompt_ids, n_cot, n_answer, density, seed, hard=False):
    """One row alone, step by step with the KV cache: the inputs fed, the means, the answer tokens and logits."""
    gen = torch.Generator().manual_seed(seed)
    embed = model.get_input_embeddings()
    ids = torch.tensor([prompt_ids])
    mask = torch.ones_like(ids)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True).logits[:, -1]
    pos = ids.shape[1]
    inputs, means, cot_ids, answer, answer_logits = [], [], [], [], []

    def feed(x):
        nonlocal logits, mask, pos
        mask = torch.cat([mask, mask.new_ones(1, 1)], 1)
        logits = model(inputs_embeds=x[None, None], attention_mask=mask, position_ids=torch.tensor([[pos]]),
                       cache=cache, use_cache=True).logits[:, -1]
        pos += 1

    for _ in range(n_cot):
        if hard:
            token = torch.multinomial(torch.softmax(logits[0].float(), -1), 1, generator=gen)
            cot_ids.append(int(token))
            feed(embed(token)[0])
        else:
            mean = cot_means(logits[:, None], embed, TAU)[0, 0]
            noisy = mean + density.sigma * torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
            inputs.append(noisy)
            means.append(mean)
            feed(noisy)
    for _ in range(n_answer):
        answer_logits.append(logits[0])
        token = logits[0].argmax()
        answer.append(int(token))
        feed(embed(token))
    return inputs, means, cot_ids, answer, answer_logits


def batch_rollouts(model, prompts, lengths, density, hard=False):
    tok = tiny_tokenizer()
    rows = [decode_row(model, tok.encode(p, add_special_tokens=False), nc, na, density, seed=i, hard=hard)
            for i, (p, (nc, na)) in enumerate(zip(prompts, lengths, strict=True))]
    enc = tok(prompts, padding=True, add_special_tokens=False, return_tensors="pt")
    n, t, a = len(prompts), max(nc for nc, _ in lengths), max(na for _, na in lengths)
    dim = model.get_input_embeddings().weight.shape[1]
    dtype = model.get_input_embeddings().weight.dtype
    cot_inputs, cot_ids = torch.zeros(n, t, dim, dtype=dtype), torch.zeros(n, t, dtype=torch.long)
    cot_mask, answer_ids, answer_mask = torch.zeros(n, t), torch.zeros(n, a, dtype=torch.long), torch.zeros(n, a)
    for i, (inputs, _, ids, answer, _) in enumerate(rows):
        nc, na = lengths[i]
        if inputs:
            cot_inputs[i, :nc] = torch.stack(inputs)
        if ids:
            cot_ids[i, :nc] = torch.tensor(ids)
        cot_mask[i, :nc] = 1
        answer_ids[i, :na] = torch.tensor(answer)
        answer_mask[i, :na] = 1
    args = (enc.input_ids, enc.attention_mask, cot_mask, answer_ids, answer_mask)
    kw = dict(cot_ids=cot_ids, temperature=1.0) if hard else dict(cot_inputs=cot_inputs, density=density,
                                                                    temperature=TAU)
    return rows, args, kw


PROMPTS = ["hello 1+2", "x", "7 + 8 = 15", "ab"]
LENGTHS = [(5, 3), (2, 4), (0, 2), (4, 1)]  # ragged CoT and answer lengths, one row without CoT


@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_forced_pass_reproduces_the_rollout(arch):
    model = tiny_model(arch).double()
    density = GaussianDensity.from_embedding(model.get_input_embeddings(), 0.33)
    with torch.no_grad():
        rows, args, kw = batch_rollouts(model, PROMPTS, LENGTHS, density)
        out = rollout_log_probs(model, *args, **kw, chunk_size=2)
    for i, (inputs, means, _, _, answer_logits) in enumerate(rows):
        nc, na = LENGTHS[i]
        if nc:
            torch.testing.assert_close(out.means[i, :nc].double(), torch.stack(means).double(), atol=1e-6, rtol=1e-6)
            want = density.log_prob(torch.stack(inputs)[None], torch.stack(means)[None])[0]
            torch.testing.assert_close(out.cot[i, :nc].double(), want.double(), atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(out.answer_logits[i, :na], torch.stack(answer_logits), atol=1e-6, rtol=1e-6)
        want = torch.log_softmax(torch.stack(answer_logits), -1).gather(-1, out_ids(args, i, na))[:, 0]
        torch.testing.assert_close(out.answer[i, :na], want, atol=1e-5, rtol=1e-5)
        assert (out.cot[i, nc:] == 0).all() and (out.answer[i, na:] == 0).all()


def out_ids(args, i, na):
    return args[3][i, :na, None]


def test_hard_rollout_token_log_probs():
    model = tiny_model("llama").double()
    with torch.no_grad():
        rows, args, kw = batch_rollouts(model, PROMPTS, LENGTHS, None, hard=True)
        out = rollout_log_probs(model, *args, **kw)
    assert out.means is None
    # Recompute row 0 alone without cache: the log-prob of each sampled CoT token given what precedes it.
    tok = tiny_tokenizer()
    ids = tok.encode(PROMPTS[0], add_special_tokens=False) + rows[0][2]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    p = len(ids) - len(rows[0][2])
    want = torch.log_softmax(logits[p - 1:-1], -1).gather(-1, torch.tensor(rows[0][2])[:, None])[:, 0]
    torch.testing.assert_close(out.cot[0, :5], want, atol=1e-6, rtol=1e-6)


def test_gradient_matches_finite_differences():
    """d/d(theta) of the summed CoT and answer log-probs, along a random direction, float64. GPT-2: its
    LayerNorm stays in float64 (the RMSNorm of Llama-like models computes in float32 whatever the dtype,
    which would put float32 noise into the difference quotient)."""
    torch.manual_seed(0)
    model = tiny_model("gpt2").double()
    density = GaussianDensity.from_embedding(model.get_input_embeddings(), 0.33)
    with torch.no_grad():
        _, args, kw = batch_rollouts(model, PROMPTS[:2], LENGTHS[:2], density)
    params = [model.transformer.h[0].mlp.c_fc.weight, model.transformer.ln_f.weight]

    def objective():
        out = rollout_log_probs(model, *args, **kw)
        return out.cot.double().sum() + out.answer.double().sum()

    value = objective()
    grads = torch.autograd.grad(value, params)
    directions = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, directions, strict=True))
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, directions, strict=True):
            p.add_(eps * d)
        plus = objective()
        for p, d in zip(params, directions, strict=True):
            p.sub_(2 * eps * d)
        minus = objective()
    numeric = (plus - minus) / (2 * eps)
    assert analytic.item() == pytest.approx(numeric.item(), rel=1e-5)
    assert abs(analytic.item()) > 1e-3  # the check is not trivially 0 = 0


def test_top_k_means_and_per_dimension_density():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(20, 4)
    logits = torch.randn(2, 3, 20)
    dense = cot_means(logits, embedding, 1.0)
    torch.testing.assert_close(dense, torch.softmax(logits, -1) @ embedding.weight)
    top = cot_means(logits, embedding, 1.0, top_k=1)
    torch.testing.assert_close(top, embedding(logits.argmax(-1)))
    x, mu = torch.ones(1, 1, 4), torch.zeros(1, 1, 4)
    assert GaussianDensity(2.0).log_prob(x, mu).item() == pytest.approx(-4 / 8)
    assert GaussianDensity(2.0, per_dimension=True).log_prob(x, mu).item() == pytest.approx(-1 / 8)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: GaussianDensity(0.0), "sigma=0.0 must be > 0"),
    (lambda: GaussianDensity.from_embedding(torch.nn.Embedding(3, 2), 0.0), "noise_factor=0.0 must be > 0"),
    (lambda: cot_means(torch.zeros(1, 1, 3), torch.nn.Embedding(3, 2), 0.0), "temperature=0.0 must be > 0"),
    (lambda: rollout_log_probs(tiny_model("llama"), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2),
                               torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1),
                               temperature=1.0),
     "exactly one of cot_inputs"),
    (lambda: rollout_log_probs(tiny_model("llama"), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2),
                               torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1),
                               cot_inputs=torch.zeros(1, 1, 64), temperature=0.5), "needs a density"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_positions_skip_the_padding_between_cot_and_answer():
    mask = torch.tensor([[0, 1, 1, 1, 0, 0, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 1, 2, 2, 2, 3, 4]]

