"""Mixers: properties on arbitrary logits and filters, and oracles for each method's formula."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_filters import assert_distribution_rows, filter_configs, hf_filtered, logits_batches
from torch import nn

from softtok.soft import (
    MIXERS,
    DirichletMixer,
    FilterConfig,
    GumbelMixer,
    HardMixer,
    Mixer,
    MixtureOfInputsMixer,
    SoftEmbedding,
    SoftToken,
    TopKMixer,
    build_mixer,
    filter_candidates,
    tempered_probs,
)

#: Every mixer variant; "hard-sample" is HardMixer(sample=True).
VARIANTS = ("topk", "dirichlet", "gumbel", "moi", "hard", "hard-sample")


def make_mixer(variant: str, max_topk: int, vocab: int) -> Mixer:
    """One mixer of ``variant`` with ``max_topk`` components (the hard ones always keep 1)."""
    if variant == "hard":
        return HardMixer()
    if variant == "hard-sample":
        return HardMixer(sample=True, vocab_size=vocab)
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

    torch.manual_seed(seed)
    ids, weights, ent = soft.mix_logits(logits)
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

    # A fixed seed reproduces the step exactly.
    torch.manual_seed(seed)
    ids2, weights2, ent2 = soft.mix_logits(logits)
    assert torch.equal(ids, ids2) and torch.equal(weights, weights2) and torch.equal(ent, ent2)


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=30, deadline=None)
@given(logits=logits_batches(), data=st.data())
def test_all_filtered_row_gives_the_argmax_one_hot(variant: str, logits: torch.Tensor, data: st.DataObject) -> None:
    vocab = logits.shape[1]
    cfg = FilterConfig(temperature=1.0, top_p=1e-9)  # keeps only the top entry of every row
    soft = soft_embedding(variant, data.draw(st.integers(1, vocab)), vocab, cfg)
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    ids, weights, _ = soft.mix_logits(logits)
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
def test_hard_sample_matches_multinomial_over_the_filtered_vocabulary(cfg: FilterConfig) -> None:
    vocab = 83
    torch.manual_seed(0)
    logits = torch.randn(32, vocab) * 2
    soft = SoftEmbedding(nn.Embedding(vocab, 8), cfg, HardMixer(sample=True, vocab_size=vocab))
    torch.manual_seed(123)
    ids, weights, _ = soft.mix_logits(logits)
    torch.manual_seed(123)
    expected = torch.multinomial(hf_filtered(logits, cfg), 1)  # what HF `generate` samples
    assert torch.equal(ids, expected)
    assert torch.equal(weights, torch.ones(32, 1))


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
    assert set(MIXERS) == {"topk", "dirichlet", "gumbel", "moi", "hard"}
    assert isinstance(build_mixer("topk", max_topk=3), TopKMixer)
    mixer = build_mixer("dirichlet", max_topk=5, alpha=2.0)
    assert isinstance(mixer, DirichletMixer) and mixer.alpha == 2.0 and mixer.max_topk == 5
    assert isinstance(build_mixer("gumbel", tau=0.6), GumbelMixer)
    assert isinstance(build_mixer("moi"), MixtureOfInputsMixer)
    assert build_mixer("moi").max_topk == 20
    assert isinstance(build_mixer("hard", sample=True, vocab_size=7), HardMixer)


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
        (lambda: HardMixer(sample=True), "vocab_size"),
    ],
)
def test_bad_mixer_values_raise(build, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        build()
