"""Mixers: properties on arbitrary logits and filters, and oracles for each method's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_filters import assert_distribution_rows, filter_configs, hf_filtered, logits_batches
from tiny import tiny_model
from torch import nn

from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.soft import (
    MIXERS,
    DirichletMixer,
    FilterConfig,
    GumbelMixer,
    HardMixer,
    Mixer,
    MixtureOfInputsMixer,
    MultiplexMixer,
    SoftEmbedding,
    SoftToken,
    TopKMixer,
    build_mixer,
    filter_candidates,
    tempered_probs,
)
from softtok.soft.random import RowRandom

#: Every mixer variant; "hard-sample" is HardMixer(sample=True).
VARIANTS = ("topk", "dirichlet", "gumbel", "moi", "hard", "hard-sample")


def make_mixer(variant: str, max_topk: int, vocab: int) -> Mixer:
    """One mixer of ``variant`` with ``max_topk`` components (the hard ones always keep 1)."""
    if variant == "hard":
        return HardMixer()
    if variant == "hard-sample":
        return HardMixer(sample=True)
    return build_mixer(variant, max_topk=max_topk)


def soft_embedding(variant: str, max_topk: int, vocab: int, cfg: FilterConfig) -> SoftEmbedding:
    return SoftEmbedding(nn.Embedding(vocab, 4), cfg, make_mixer(variant, max_topk, vocab))


# --- properties -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_mixture_is_a_sorted_distribution(variant: str, data: st.DataObject) -> None:
    logits = data.draw(logits_batches())
    batch, vocab = logits.shape
    cfg = data.draw(filter_configs(vocab))
    max_topk = data.draw(st.integers(1, vocab))
    seed = data.draw(st.integers(0, 2**31 - 1))
    soft = soft_embedding(variant, max_topk, vocab, cfg)

    key = RowRandom(torch.arange(batch) + seed)
    ids, weights, ent = soft.mix_logits(logits, key)
    assert_distribution_rows(weights)
    assert torch.isfinite(ent).all()
    # K is max_topk, capped by the candidates the filters leave (top_k, or the vocabulary).
    expected_k = 1 if variant.startswith("hard") else min(max_topk, cfg.top_k or vocab)
    assert ids.shape == weights.shape == (batch, expected_k)
    assert ids.dtype == torch.long and ((ids >= 0) & (ids < vocab)).all()
    assert (ids.sort(-1).values.diff(dim=-1) > 0).all(), "ids must be distinct"
    assert (weights[:, :-1] >= weights[:, 1:]).all(), "components must be sorted by weight, descending"
    # The mixture only uses tokens that survived the filters.
    cand = filter_candidates(tempered_probs(logits, cfg.temperature), cfg)
    survived = cand.to_dense(vocab) > 0
    assert survived.gather(-1, ids)[weights > 0].all()

    # The same row seeds reproduce the step exactly.
    ids2, weights2, ent2 = soft.mix_logits(logits, RowRandom(torch.arange(batch) + seed))
    assert torch.equal(ids, ids2) and torch.equal(weights, weights2) and torch.equal(ent, ent2)


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=30, deadline=None)
@given(logits=logits_batches(), data=st.data())
def test_all_filtered_row_gives_the_argmax_one_hot(variant: str, logits: torch.Tensor, data: st.DataObject) -> None:
    vocab = logits.shape[1]
    cfg = FilterConfig(temperature=1.0, top_p=1e-9)  # keeps only the top entry of every row
    soft = soft_embedding(variant, data.draw(st.integers(1, vocab)), vocab, cfg)
    key = RowRandom(torch.arange(logits.shape[0]) + data.draw(st.integers(0, 1000)))
    ids, weights, _ = soft.mix_logits(logits, key)
    probs = tempered_probs(logits, 1.0)
    torch.testing.assert_close(weights[:, 0], torch.ones(logits.shape[0]))
    torch.testing.assert_close(probs.gather(-1, ids[:, :1])[:, 0], probs.max(-1).values)


# --- oracles ----------------------------------------------------------------------------------------------


def candidates_of(weights: list[list[float]]) -> SoftToken:
    """Sorted candidates ``ids = 0..C-1`` with the given (descending, normalised) weights."""
    w = torch.tensor(weights)
    return SoftToken(torch.arange(w.shape[1]).expand(w.shape[0], -1).clone(), w)


@pytest.mark.parametrize("cfg", [FilterConfig(), FilterConfig(0.6, 30, 0.95, 0.001)], ids=str)
def test_topk_with_k1_is_the_argmax_one_hot(cfg: FilterConfig) -> None:
    torch.manual_seed(0)
    vocab = 83
    logits = torch.randn(16, vocab) * 4
    embedding = nn.Embedding(vocab, 8)
    step = SoftEmbedding(embedding, cfg, TopKMixer(1))(logits)
    assert torch.equal(step.token.ids[:, 0], logits.argmax(-1))
    assert torch.equal(step.token.weights, torch.ones(16, 1))
    torch.testing.assert_close(step.embeds, embedding(logits.argmax(-1)))


@pytest.mark.parametrize(
    "cfg", [FilterConfig(), FilterConfig(0.6, 30, 0.95, 0.001), FilterConfig(1.0, 0, 0.9, 0.05)], ids=str
)
def test_hard_sample_follows_hf_filtered_distribution(cfg: FilterConfig) -> None:
    """Sampled ids are draws of HF's warped distribution (temperature, top-k, top-p, min-p, softmax):
    20,000 row seeds on one logits row, every token's frequency within 5 se, filtered tokens never drawn."""
    vocab, n = 83, N_DRAWS
    torch.manual_seed(0)
    logits = (torch.randn(1, vocab) * 2).expand(n, -1)
    soft = SoftEmbedding(nn.Embedding(vocab, 8), cfg, HardMixer(sample=True))
    ids, weights, _ = soft.mix_logits(logits, RowRandom(torch.arange(n)))
    assert torch.equal(weights, torch.ones(n, 1))
    expected = hf_filtered(logits[:1], cfg)[0].double()
    freq = torch.bincount(ids[:, 0], minlength=vocab).double() / n
    assert (freq[expected == 0] == 0).all()
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * se + 1e-12).all(), (freq, expected)


def test_hard_greedy_is_the_argmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 50)
    ids, weights, _ = soft_embedding("hard", 1, 50, FilterConfig(0.6, 30, 0.95)).mix_logits(logits)
    assert torch.equal(ids[:, 0], logits.argmax(-1)) and torch.equal(weights, torch.ones(8, 1))


def test_dirichlet_with_huge_alpha_reproduces_the_input() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(64, 12) * 2, -1)
    cand = filter_candidates(probs, FilterConfig())
    ids, weights = DirichletMixer(max_topk=12, alpha=1e6)(cand.ids, cand.weights)
    # Dir(alpha p) has per-component std sqrt(p (1 - p) / (alpha + 1)) <= 5e-4 here.
    torch.testing.assert_close(SoftToken(ids, weights).to_dense(12), probs, atol=5e-3, rtol=0)


def test_dirichlet_drops_negligible_entries_and_cuts_to_k() -> None:
    torch.manual_seed(0)
    cand = candidates_of([[0.6, 0.3, 0.1 - 1e-8, 1e-8, 0.0]] * 200)
    ids, weights = DirichletMixer(max_topk=5, alpha=4.0)(cand.ids, cand.weights)
    dense = SoftToken(ids, weights).to_dense(5)
    assert (dense[:, 3:] == 0).all(), "entries with p <= 1e-7 must get no mass"
    assert (dense[:, :3] > 0).any(0).all()
    # The resampling really moves the weights (alpha = 4 is a lot of noise).
    assert dense[:, 0].std() > 0.1
    ids3, weights3 = DirichletMixer(max_topk=2, alpha=4.0)(cand.ids, cand.weights)
    assert ids3.shape == (200, 2)
    assert_distribution_rows(weights3)


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_gumbel_shown_token_is_a_sample_of_the_weights(tau: float) -> None:
    torch.manual_seed(0)
    w = [0.4, 0.3, 0.15, 0.1, 0.05]
    n = 20_000
    cand = candidates_of([w] * n)
    ids, weights = GumbelMixer(max_topk=5, tau=tau)(cand.ids, cand.weights)
    freq = torch.bincount(ids[:, 0], minlength=5).float() / n
    # Gumbel-max: the top component is distributed as w whatever tau. The largest binomial std is
    # sqrt(0.4 * 0.6 / 20000) = 0.0035; a 0.02 band is ~6 std, and the seed is fixed.
    torch.testing.assert_close(freq, torch.tensor(w), atol=0.02, rtol=0)
    # Chi-square statistic, 4 degrees of freedom: P(X > 30) < 1e-5.
    expected = torch.tensor(w) * n
    chi2 = ((freq * n - expected) ** 2 / expected).sum()
    assert chi2 < 30, chi2
    assert_distribution_rows(weights)


def test_gumbel_keeps_the_top_k_support() -> None:
    torch.manual_seed(0)
    cand = candidates_of([[0.5, 0.2, 0.15, 0.1, 0.05]] * 100)
    ids, weights = GumbelMixer(max_topk=3, tau=0.5)(cand.ids, cand.weights)
    assert (ids.sort(-1).values == torch.tensor([0, 1, 2])).all()
    assert (weights > 0).all()


def test_gumbel_small_tau_is_nearly_one_hot() -> None:
    torch.manual_seed(0)
    cand = candidates_of([[0.5, 0.3, 0.2]] * 100)
    _, weights = GumbelMixer(max_topk=3, tau=1e-3)(cand.ids, cand.weights)
    assert (weights[:, 0] > 0.99).float().mean() > 0.95


def test_mixture_of_inputs_follows_its_formula() -> None:
    # Hand computation for p_K = (0.5, 0.3, 0.2), K = 3, beta = 1:
    #   H = -(0.5 ln 0.5 + 0.3 ln 0.3 + 0.2 ln 0.2) = 1.0296530, Hn = H / ln 3 = 0.9372306
    #   q = (p + onehot(s)) / 2;   weights = Hn q + (1 - Hn) onehot(s)
    hn = 0.9372306
    expected = {
        0: [hn * 0.75 + (1 - hn), hn * 0.15, hn * 0.10],  # 0.7656612, 0.1405846, 0.0937231
        1: [hn * 0.25, hn * 0.65 + (1 - hn), hn * 0.10],  # 0.2343077, 0.6719193, 0.0937231
        2: [hn * 0.25, hn * 0.15, hn * 0.60 + (1 - hn)],  # 0.2343077, 0.1405846, 0.6251078
    }
    n = 600
    torch.manual_seed(0)
    cand = candidates_of([[0.5, 0.3, 0.2]] * n)
    ids, weights = MixtureOfInputsMixer(max_topk=3, beta=1.0)(cand.ids, cand.weights)
    dense = SoftToken(ids, weights).to_dense(3)
    sampled = torch.tensor([[abs(dense[i, s].item() - expected[s][s]) < 1e-5 for s in range(3)] for i in range(n)])
    assert (sampled.sum(1) == 1).all(), "every row must match exactly one sampled token"
    chosen = sampled.float().argmax(1)
    torch.testing.assert_close(dense, torch.tensor([expected[s] for s in chosen.tolist()]), atol=1e-6, rtol=0)
    # The sampled token s is drawn from p_K.
    freq = torch.bincount(chosen, minlength=3).float() / n
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.08, rtol=0)
    # Check the hand-computed constant itself.
    assert abs(-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) / math.log(3) - hn) < 1e-6


def test_mixture_of_inputs_edge_cases() -> None:
    torch.manual_seed(0)
    # K = 1: no entropy to normalise, the input is the sampled (only) token.
    token = MixtureOfInputsMixer(max_topk=1).mix(candidates_of([[0.7, 0.3]] * 4))
    assert torch.equal(token.ids, torch.zeros(4, 1, dtype=torch.long)) and torch.equal(token.weights, torch.ones(4, 1))
    # Uniform p_K: Hn = 1, so the weights are q itself.
    token = MixtureOfInputsMixer(max_topk=4, beta=0.5).mix(candidates_of([[0.25] * 4] * 4))
    torch.testing.assert_close(token.weights, torch.tensor([[0.5, 1 / 6, 1 / 6, 1 / 6]] * 4))
    # beta = 0 and a one-hot p_K: just the one-hot.
    token = MixtureOfInputsMixer(max_topk=3, beta=0.0).mix(candidates_of([[1.0, 0.0, 0.0]] * 2))
    torch.testing.assert_close(token.weights, torch.tensor([[1.0, 0.0, 0.0]] * 2))


def test_mix_wraps_forward() -> None:
    cand = candidates_of([[0.5, 0.3, 0.2]])
    token = TopKMixer(2).mix(cand)
    assert isinstance(token, SoftToken)
    torch.testing.assert_close(token.weights, torch.tensor([[0.625, 0.375]]))


# --- construction and validation --------------------------------------------------------------------------


def test_build_mixer_by_name() -> None:
    assert set(MIXERS) == {"topk", "dirichlet", "gumbel", "moi", "hard", "multiplex"}
    assert isinstance(build_mixer("multiplex", width=2, merge="mean"), MultiplexMixer)
    assert isinstance(build_mixer("topk", max_topk=3), TopKMixer)
    mixer = build_mixer("dirichlet", max_topk=5, alpha=2.0)
    assert isinstance(mixer, DirichletMixer) and mixer.alpha == 2.0 and mixer.max_topk == 5
    assert isinstance(build_mixer("gumbel", tau=0.6), GumbelMixer)
    assert isinstance(build_mixer("moi"), MixtureOfInputsMixer)
    assert build_mixer("moi").max_topk == 20
    assert isinstance(build_mixer("hard", sample=True), HardMixer)


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: build_mixer("softmax"), "'softmax'"),
        (lambda: TopKMixer(0), "max_topk=0"),
        (lambda: TopKMixer(-3), "max_topk=-3"),
        (lambda: build_mixer("gumbel", max_topk=2.5), "max_topk=2.5"),
        (lambda: DirichletMixer(alpha=0.0), "alpha=0.0"),
        (lambda: DirichletMixer(alpha=-1.0), "alpha=-1.0"),
        (lambda: GumbelMixer(tau=0.0), "tau=0.0"),
        (lambda: GumbelMixer(tau=-0.5), "tau=-0.5"),
        (lambda: MixtureOfInputsMixer(beta=-1.0), "beta=-1.0"),
        (lambda: MultiplexMixer(width=0), "width=0"),
        (lambda: MultiplexMixer(width=-2), "width=-2"),
        (lambda: MultiplexMixer(width=1.5), "width=1.5"),
        (lambda: MultiplexMixer(merge="sum"), "merge='sum'"),
    ],
)
def test_bad_mixer_values_raise(build, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        build()


# --- small concentrations and temperatures: no underflow, no overflow -------------------------------------
# Statistical checks use n = 20,000 rows and a fixed seed. A frequency or a mean has standard error
# se = sqrt(var / n) (at most sqrt(0.25 / 20000) = 0.0035 for a frequency); the bands are 5 se, which a
# correct sampler leaves with probability < 1e-6 per check, and which the faulty one missed by 10-100 se.

N_DRAWS = 20_000
P3 = [0.5, 0.3, 0.2]
ALPHAS = [1e-3, 1e-2, 0.1, 1.0, 10.0, 1e3]


def draws(mixer: Mixer, weights: list[float], n: int = N_DRAWS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` mixtures of the one candidate row ``weights``: the top ids ``[n]`` and the dense weights ``[n, C]``."""
    cand = candidates_of([weights] * n)
    ids, mixed = mixer(cand.ids, cand.weights, RowRandom(torch.arange(n) + seed * n))
    return ids[:, 0], SoftToken(ids, mixed).to_dense(len(weights))


def assert_frequencies(top: torch.Tensor, p: list[float]) -> None:
    """The top-1 ids are a sample of ``p``: every frequency within 5 se, and a chi-square test at P < 1e-5."""
    n, expected = top.shape[0], torch.tensor(p, dtype=torch.float64)
    freq = torch.bincount(top, minlength=len(p)).double() / n
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * se).all(), (freq, expected)
    chi2 = ((freq - expected) ** 2 / expected).sum() * n
    limit = {2: 23.0, 4: 28.5}[len(p) - 1]  # P(chi2_df > limit) ~ 1e-5 for df = 2, 4
    assert chi2 < limit, chi2


def assert_rows_sum_to_one(weights: torch.Tensor) -> None:
    """Finite, non-negative rows summing to 1 within the dtype's precision (K roundings of eps / 2)."""
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    eps = torch.finfo(weights.dtype).eps
    assert (weights.double().sum(-1) - 1).abs().max() <= weights.shape[-1] * eps


def test_dirichlet_small_alpha_keeps_the_rows_normalised() -> None:
    # Issue 8: Gamma(0.0005) draws underflowed in float32, most rows summed to 3.5e-8 and the top-1 frequency was
    # [0.96, 0.03, 0.01]. As alpha -> 0, Dir(alpha p) puts nearly all its mass on one component, chosen with
    # probability p_i (the bias at alpha = 1e-3 is below 1e-3, 2e6 draws: [0.4995, 0.3002, 0.2003]).
    cand = candidates_of([P3] * N_DRAWS)
    torch.manual_seed(0)
    ids, weights = DirichletMixer(3, alpha=1e-3)(cand.ids, cand.weights)
    assert weights.dtype == torch.float32
    assert_rows_sum_to_one(weights)
    assert_frequencies(ids[:, 0], P3)


@pytest.mark.parametrize("alpha", [1e-300, 1e-6, 1e-3, 1e-2, 0.1])
def test_dirichlet_top1_tends_to_p_as_alpha_vanishes(alpha: float) -> None:
    p = [0.4, 0.3, 0.15, 0.1, 0.05]
    top, dense = draws(DirichletMixer(5, alpha=alpha), p, seed=1)
    assert_frequencies(top, p)
    assert_rows_sum_to_one(dense)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_dirichlet_mean_and_variance(alpha: float) -> None:
    # p' ~ Dir(alpha p): E p'_i = a_i / a_0 and Var p'_i = a_i (a_0 - a_i) / (a_0^2 (a_0 + 1)), a = alpha p. The
    # last entry (p <= 1e-7) is dropped, so a_0 = alpha (1 - 5e-8). No top-K cut (K = C), which would change both.
    p = [0.4, 0.25, 0.2, 0.1, 0.05 - 5e-8, 5e-8]
    a = torch.tensor(p[:-1], dtype=torch.float64) * alpha
    a0 = a.sum()
    mean, var = a / a0, a * (a0 - a) / (a0**2 * (a0 + 1))
    _, dense = draws(DirichletMixer(len(p), alpha=alpha), p, seed=2)
    assert (dense[:, -1] == 0).all(), "entries with p <= 1e-7 must get no mass"
    assert_rows_sum_to_one(dense)
    w = dense[:, :-1].double()
    sample_mean, centred = w.mean(0), w - w.mean(0)
    sample_var = centred.pow(2).mean(0) * N_DRAWS / (N_DRAWS - 1)
    assert ((sample_mean - mean).abs() <= 5 * (var / N_DRAWS).sqrt()).all(), (sample_mean, mean)
    # The sample variance has se sqrt((m4 - s^4) / n), estimated from the fourth central moment m4.
    var_se = ((centred.pow(4).mean(0) - sample_var**2) / N_DRAWS).sqrt()
    assert ((sample_var - var).abs() <= 5 * var_se).all(), (sample_var, var, var_se)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_dirichlet_symmetric_marginal_is_above_half_half_the_time(alpha: float) -> None:
    # An exact distributional check for every alpha: with p_0 = 1/2 the marginal p'_0 ~ Beta(alpha / 2, alpha / 2)
    # is symmetric about 1/2, so P(p'_0 > 1/2) = 1/2 (the faulty sampler gave 0.04 at alpha = 1e-3).
    _, dense = draws(DirichletMixer(3, alpha=alpha), P3, seed=3)
    above = (dense[:, 0] > 0.5).double().mean()
    assert abs(above - 0.5) <= 5 * math.sqrt(0.25 / N_DRAWS), above


def test_dirichlet_large_alpha_keeps_the_order_of_p() -> None:
    # alpha = 1e3: sd(p'_0 - p'_1) ~ 0.02, so p'_0 < p'_1 is a 9-sigma event; alpha = inf is p itself.
    top, dense = draws(DirichletMixer(3, alpha=1e3), P3, seed=4)
    assert (top == 0).all()
    _, exact = draws(DirichletMixer(3, alpha=float("inf")), P3, n=4)
    torch.testing.assert_close(exact, torch.tensor([P3] * 4), atol=0, rtol=0)


@st.composite
def candidate_rows(draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted, renormalised candidates ``(ids, weights)`` with zeros and entries around the 1e-7 cutoff."""
    batch, width = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    values = draw(arrays(np.float64, (batch, width), elements=st.one_of(
        st.floats(0.0, 1.0), st.sampled_from([0.0, 1e-30, 5e-8, 1e-7, 2e-7, 1e-3]))))
    values[:, 0] = np.maximum(values[:, 0], 0.1)
    weights = torch.from_numpy(values)
    weights = (weights / weights.sum(-1, keepdim=True)).float()
    weights, order = weights.sort(dim=-1, descending=True, stable=True)
    return order, weights


@settings(max_examples=60, deadline=None)
@given(
    rows=candidate_rows(),
    alpha=st.one_of(
        st.sampled_from([5e-324, 1e-300, 1e-30, 1e-3, 4.0, 1e30, 1e300, 1.7e308, float("inf")]),
        st.floats(-300, 300).map(lambda e: 10.0**e),
    ),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    data=st.data(),
)
def test_dirichlet_any_alpha_gives_sorted_distributions(rows, alpha: float, dtype: torch.dtype, data) -> None:
    ids, weights = rows[0], rows[1].to(dtype)
    max_topk = data.draw(st.integers(1, ids.shape[1]))
    seed = data.draw(st.integers(0, 2**31 - 1))
    mixer = DirichletMixer(max_topk, alpha=alpha)
    torch.manual_seed(seed)
    out_ids, out = mixer(ids, weights)
    assert out.dtype == dtype and out_ids.shape == out.shape == (ids.shape[0], min(max_topk, ids.shape[1]))
    assert_rows_sum_to_one(out)
    assert (out[:, :-1] >= out[:, 1:]).all()
    dropped = torch.zeros_like(ids, dtype=torch.bool).scatter_(-1, ids, weights.double() <= 1e-7)  # by token id
    assert (out[dropped.gather(-1, out_ids)] == 0).all(), "entries with p <= 1e-7 must get no mass"
    torch.manual_seed(seed)
    again_ids, again = mixer(ids, weights)
    assert torch.equal(out_ids, again_ids) and torch.equal(out, again)


@pytest.mark.parametrize("tau", [1e-38, 1e-300])
def test_gumbel_tiny_tau_is_the_one_hot_gumbel_max_sample(tau: float) -> None:
    # (log w + g) / tau overflowed float32 (inf - inf = NaN) from tau ~ 1e-37 down; 1e-300 is 0 in float32.
    # Subtracting the maximum first leaves the exact limit: the one-hot of the Gumbel-max sample, distributed as w.
    w = [0.4, 0.3, 0.15, 0.1, 0.05]
    top, dense = draws(GumbelMixer(5, tau=tau), w, seed=5)
    assert (dense.max(-1).values == 1).all() and ((dense == 0).sum(-1) == 4).all()
    assert_frequencies(top, w)


def test_gumbel_infinite_tau_is_uniform_over_the_support() -> None:
    # tau = inf: the limit softmax(0) over the kept support; a zero weight stays at 0 (-inf / inf was NaN).
    cand = candidates_of([[0.7, 0.3, 0.0]] * 4)
    _, weights = GumbelMixer(3, tau=float("inf"))(cand.ids, cand.weights)
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5, 0.0]] * 4), atol=0, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_weights_give_finite_rows_in_their_dtype(variant: str, dtype: torch.dtype) -> None:
    # Rows with zero weights in float16: Mixture of Inputs took 0 * log(clamp(0, 1e-30)) with 1e-30 -> 0 in float16,
    # which is 0 * -inf = NaN. Every mixer computes in >= float32 and returns the input dtype; with the same seed the
    # result is the float32 result rounded.
    cand = candidates_of([[0.6, 0.3, 0.1, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25, 0.0]] * 8)
    half = cand.weights.to(dtype)
    mixer = make_mixer(variant, 4, 5)
    torch.manual_seed(6)
    ids, weights = mixer(cand.ids, half)
    assert weights.dtype == dtype
    assert_rows_sum_to_one(weights)
    torch.manual_seed(6)
    ids32, weights32 = mixer(cand.ids, half.float())
    assert torch.equal(ids, ids32)
    torch.testing.assert_close(weights, weights32.to(dtype), atol=0, rtol=0)


# --- through the generator --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generator_dirichlet_small_alpha_embeddings_are_not_collapsed(arch: str, tokenizer) -> None:
    # Issue 8 through the decode loop: with mode="dirichlet", alpha=0.01 about half of the soft embeddings had
    # ~1e-8 of the norm of the rows they mix (their weights summed to ~3.5e-8). Every thinking step must feed the
    # mixture of its rows with weights summing to 1: the norm equals that of the normalised mixture, and (random
    # 64-d rows, K <= 10, nearly one-hot at this alpha) is at least a tenth of the rows' weighted mean norm.
    model = tiny_model(arch)
    cfg = GenerationConfig(mode="dirichlet", alpha=0.01, max_think_tokens=32, max_answer_tokens=0)
    gen = SoftThinkingGenerator(model, tokenizer, cfg)
    steps = []
    gen.soft.register_forward_hook(lambda module, args, step: steps.append(step))
    torch.manual_seed(0)
    gen.generate(["ab", "hello world 12", "x", "7 + 8 ="])
    assert steps
    embedding = model.get_input_embeddings()
    for step in steps:
        weights = step.token.weights.double()
        assert_rows_sum_to_one(step.token.weights)
        rows = embedding(step.token.ids).double()  # [B, K, D]
        normalised = weights / weights.sum(-1, keepdim=True)
        mixed = torch.einsum("bk,bkd->bd", normalised, rows)
        norms = step.embeds.double().norm(dim=-1)
        torch.testing.assert_close(norms, mixed.norm(dim=-1), atol=1e-5, rtol=1e-4)
        row_norms = (normalised * rows.norm(dim=-1)).sum(-1)
        assert (norms >= 0.1 * row_norms).all(), (norms, row_norms)


# --- Multiplex Thinking -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [FilterConfig(1.0), FilterConfig(0.6, 30, 0.95, 0.001)], ids=str)
def test_multiplex_width_one_is_discrete_sampling(cfg: FilterConfig) -> None:
    """Width 1 draws exactly the token HardMixer(sample=True) draws from the same row seeds, with weight 1."""
    torch.manual_seed(0)
    logits = torch.randn(256, 40) * 2
    embedding = nn.Embedding(40, 6)
    rng = RowRandom(torch.arange(256) + 11)
    multiplex = SoftEmbedding(embedding, cfg, MultiplexMixer(1))(logits, rng)
    hard = SoftEmbedding(embedding, cfg, HardMixer(sample=True))(logits, rng)
    assert torch.equal(multiplex.token.ids, hard.token.ids) and torch.equal(multiplex.embeds, hard.embeds)
    assert torch.equal(multiplex.token.weights, torch.ones(256, 1))


@pytest.mark.parametrize("merge", ["mean", "weighted"])
def test_multiplex_embedding_is_the_merge_of_the_sampled_rows(merge: str) -> None:
    """The fed embedding is the mean of the sampled rows (or their probability-weighted mean), computed by hand."""
    torch.manual_seed(1)
    vocab, width = 30, 4
    logits = torch.randn(64, vocab) * 2
    embedding = nn.Embedding(vocab, 5)
    mixer = MultiplexMixer(width, merge)
    step = SoftEmbedding(embedding, FilterConfig(1.0), mixer)(logits, RowRandom(torch.arange(64)))
    ids = step.token.ids
    assert ids.shape == (64, width)
    rows = embedding.weight[ids].detach()  # [B, W, D]
    if merge == "mean":
        expected = rows.mean(1)
    else:
        p = torch.softmax(logits, -1).gather(-1, ids)  # the samples' probabilities
        expected = (p[:, :, None] * rows).sum(1) / p.sum(1, keepdim=True)
    torch.testing.assert_close(step.embeds, expected, atol=1e-6, rtol=1e-5)
    assert (ids[:, 0] == step.token.top1).all()  # the shown token is the first sample
    assert (ids[:, 0] != ids[:, 1]).any() and (ids[:, 0] == ids[:, 1]).any()  # independent draws, with replacement


@pytest.mark.parametrize("cfg", [FilterConfig(1.0, 0, 0.9, 0.0), FilterConfig(0.6, 5, 1.0, 0.0)], ids=str)
def test_multiplex_samples_follow_the_filtered_distribution(cfg: FilterConfig) -> None:
    """Every one of the W slots is a draw of HF's filtered distribution (chi-square), and two slots are independent:
    their joint frequencies match p_i p_j (chi-square on the pairs)."""
    from scipy.stats import chi2

    vocab, n, width = 12, N_DRAWS, 3
    torch.manual_seed(2)
    logits = (torch.randn(1, vocab) * 1.5).expand(n, -1)
    soft = SoftEmbedding(nn.Embedding(vocab, 4), cfg, MultiplexMixer(width, "mean"))
    ids, _, _ = soft.mix_logits(logits, RowRandom(torch.arange(n)))
    expected = hf_filtered(logits[:1], cfg)[0].double()
    support = expected > 0
    for slot in range(width):
        freq = torch.bincount(ids[:, slot], minlength=vocab).double() / n
        assert (freq[~support] == 0).all()
        stat = (((freq - expected) ** 2 / expected)[support]).sum() * n
        assert stat < chi2.isf(1e-5, int(support.sum()) - 1), (slot, stat)
    pairs = torch.bincount(ids[:, 0] * vocab + ids[:, 1], minlength=vocab * vocab).double().reshape(vocab, vocab) / n
    joint = expected[:, None] * expected[None, :]
    cells = joint > 0
    stat = (((pairs - joint) ** 2 / joint)[cells]).sum() * n
    assert stat < chi2.isf(1e-5, int(cells.sum()) - 1), stat


def test_multiplex_through_the_generator_shows_the_first_sample(tokenizer) -> None:
    """In the engine: the shown (thinking) token of each step is the mixture's first sample, rows are
    reproducible by seed, and width 1 decodes exactly like discrete sampling with the same seeds."""
    model = tiny_model("llama")
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_think_tokens=12, max_answer_tokens=4,
              think_end="</think>")
    prompts, seeds = ["ab", "hello 1", "x"], [3, 4, 5]
    cfg = GenerationConfig(mode="multiplex", width=3, return_topk=True, **kw)
    results = SoftThinkingGenerator(model, tokenizer, cfg).generate(prompts, seeds=seeds)
    again = SoftThinkingGenerator(model, tokenizer, cfg).generate(prompts, seeds=seeds)
    for r, r2 in zip(results, again, strict=True):
        assert r.think_ids == [ids[0] for ids in r.topk_ids] and len(r.topk_ids[0]) == 3
        assert r.think_ids == r2.think_ids and r.topk_weights == r2.topk_weights
    one = SoftThinkingGenerator(model, tokenizer, GenerationConfig(mode="multiplex", width=1, **kw))
    discrete = SoftThinkingGenerator(model, tokenizer, GenerationConfig(mode="discrete", **kw))
    for a, b in zip(one.generate(prompts, seeds=seeds), discrete.generate(prompts, seeds=seeds), strict=True):
        assert (a.think_ids, a.answer_ids) == (b.think_ids, b.answer_ids)
