"""Filters: properties on arbitrary logits, and oracles against Hugging Face's warpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from softtok.soft.filters import (
    FilterConfig,
    candidates,
    entropy,
    filter_candidates,
    min_p_filter,
    renormalize,
    tempered_probs,
    top_p_filter,
)

INF = float("inf")
NAN = float("nan")

# Ordinary values plus the extremes a model (or a bug upstream) can emit.
LOGIT = st.one_of(
    st.floats(-30.0, 30.0, width=32),
    st.sampled_from([-INF, INF, NAN, 1e4, -1e4, 0.0]),
)


@st.composite
def logits_batches(draw, max_vocab: int = 40) -> torch.Tensor:
    """``[B, V]`` fp32 logits; some rows are made all ``-inf``, all NaN or all equal."""
    batch = draw(st.integers(1, 4))
    vocab = draw(st.integers(2, max_vocab))
    values = draw(arrays(np.float32, (batch, vocab), elements=LOGIT))
    logits = torch.from_numpy(values)
    for row in range(batch):
        kind = draw(st.sampled_from(["as-is", "as-is", "all -inf", "all nan", "all equal"]))
        if kind == "all -inf":
            logits[row] = -INF
        elif kind == "all nan":
            logits[row] = NAN
        elif kind == "all equal":
            logits[row] = draw(st.sampled_from([0.0, 1e4, -1e4]))
    return logits


@st.composite
def filter_configs(draw, vocab: int) -> FilterConfig:
    """Any valid :class:`FilterConfig` for a vocabulary of ``vocab``, extremes included."""
    return FilterConfig(
        temperature=draw(st.one_of(st.sampled_from([0.0, 1e-4, 0.6, 1.0]), st.floats(1e-3, 5.0))),
        top_k=draw(st.integers(0, vocab)),
        top_p=draw(st.one_of(st.sampled_from([1e-6, 0.95, 1.0]), st.floats(1e-3, 1.0))),
        min_p=draw(st.one_of(st.sampled_from([0.0, 0.001, 1.0]), st.floats(0.0, 1.0))),
    )


def assert_distribution_rows(weights: torch.Tensor) -> None:
    """Finite, non-negative rows summing to 1."""
    assert torch.isfinite(weights).all()
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[0]), atol=1e-5, rtol=0)


# --- properties -------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_filtered_candidates_are_sorted_distributions(data: st.DataObject) -> None:
    logits = data.draw(logits_batches())
    cfg = data.draw(filter_configs(logits.shape[1]))
    probs = tempered_probs(logits, cfg.temperature)
    assert_distribution_rows(probs)
    cand = filter_candidates(probs, cfg)
    assert_distribution_rows(cand.weights)
    expected_width = cfg.top_k or logits.shape[1]
    assert cand.ids.shape == cand.weights.shape == (logits.shape[0], expected_width)
    assert (cand.weights[:, :-1] >= cand.weights[:, 1:]).all(), "weights must be sorted descending"
    # Ids are distinct vocabulary entries.
    assert (cand.ids.sort(-1).values.diff(dim=-1) > 0).all()
    assert ((cand.ids >= 0) & (cand.ids < logits.shape[1])).all()
    # Every filter keeps the row's most likely token, so a row is never emptied.
    assert (cand.weights[:, 0] > 0).all()
    torch.testing.assert_close(probs.gather(-1, cand.ids[:, :1])[:, 0], probs.max(-1).values)
    ent = entropy(probs)
    assert torch.isfinite(ent).all() and (ent >= -1e-6).all()
    assert (ent <= math.log(logits.shape[1]) + 1e-4).all()


@settings(max_examples=30, deadline=None)
@given(logits=logits_batches())
def test_all_filtered_row_keeps_its_argmax(logits: torch.Tensor) -> None:
    # top_p -> 0 and min_p = 1 each drop everything but the top entry.
    probs = tempered_probs(logits, 1.0)
    for cfg in (FilterConfig(top_p=1e-9), FilterConfig(min_p=1.0), FilterConfig(top_k=1, top_p=1e-9, min_p=1.0)):
        cand = filter_candidates(probs, cfg)
        assert_distribution_rows(cand.weights)
        # Ties (equal logits) may leave several entries at the maximum; the first one must be a maximiser.
        top = probs.gather(-1, cand.ids[:, :1])[:, 0]
        torch.testing.assert_close(top, probs.max(-1).values)
        if cfg.top_p < 1e-6:
            assert (cand.weights[:, 0] == 1).all()


def test_extreme_rows_are_finite() -> None:
    logits = torch.tensor(
        [
            [-INF, -INF, -INF, -INF],
            [-INF, 2.0, -INF, 1.0],
            [1e4, 1e4 - 1, -1e4, 0.0],
            [3.0, 3.0, 3.0, 3.0],
            [NAN, NAN, NAN, NAN],
            [NAN, 1.0, NAN, 0.0],
            [INF, 1.0, INF, -INF],
        ]
    )
    for temperature in (0.0, 1e-4, 0.6, 1.0, 4.0):
        probs = tempered_probs(logits, temperature)
        assert_distribution_rows(probs)
        cand = filter_candidates(probs, FilterConfig(temperature, top_k=3, top_p=0.95, min_p=0.001))
        assert_distribution_rows(cand.weights)
    probs = tempered_probs(logits, 1.0)
    torch.testing.assert_close(probs[0], torch.full((4,), 0.25))  # all -inf: uniform, not NaN
    torch.testing.assert_close(probs[3], torch.full((4,), 0.25))
    torch.testing.assert_close(probs[4], torch.full((4,), 0.25))  # all NaN: uniform
    assert probs[1, 0] == 0 and probs[1, 2] == 0  # -inf entries get no mass
    assert probs[5, 0] == 0 and probs[5, 2] == 0  # NaN entries are treated as -inf
    assert probs[2, 0] > probs[2, 1] > 0 and probs[2, 2] == 0
    torch.testing.assert_close(probs[6], torch.tensor([0.5, 0.0, 0.5, 0.0]))  # +inf entries share the mass


def test_zero_temperature_is_argmax_one_hot() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 37)
    probs = tempered_probs(logits, 0.0)
    torch.testing.assert_close(probs, torch.nn.functional.one_hot(logits.argmax(-1), 37).float())


# --- oracles ----------------------------------------------------------------------------------------------


def hf_filtered(logits: torch.Tensor, cfg: FilterConfig) -> torch.Tensor:
    """Temperature, then HF's top-k, top-p and min-p warpers in that order, then softmax."""
    scores = logits / cfg.temperature
    ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)  # the warpers ignore input_ids
    if cfg.top_k:
        scores = TopKLogitsWarper(cfg.top_k)(ids, scores)
    if cfg.top_p < 1.0:
        scores = TopPLogitsWarper(cfg.top_p)(ids, scores)
    if cfg.min_p > 0.0:
        scores = MinPLogitsWarper(cfg.min_p)(ids, scores)
    return torch.softmax(scores, dim=-1)


HF_CONFIGS = [
    FilterConfig(0.6, 30, 0.95, 0.001),  # Soft Thinking's recommended setting
    FilterConfig(1.0, 0, 0.9, 0.0),
    FilterConfig(1.0, 5, 1.0, 0.0),
    FilterConfig(0.7, 0, 1.0, 0.05),
    FilterConfig(1.3, 50, 0.5, 0.1),
    FilterConfig(0.5, 3, 0.3, 0.5),
]


@pytest.mark.parametrize("cfg", HF_CONFIGS, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filters_match_hugging_face_warpers(cfg: FilterConfig, seed: int) -> None:
    torch.manual_seed(seed)
    logits = torch.randn(8, 300) * 3
    cand = filter_candidates(tempered_probs(logits, cfg.temperature), cfg)
    ours = cand.to_dense(logits.shape[1])
    theirs = hf_filtered(logits, cfg)
    assert torch.equal(ours > 0, theirs > 0), "kept token sets differ"
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(logits=logits_batches(), temperature=st.floats(1e-2, 5.0))
def test_entropy_matches_categorical(logits: torch.Tensor, temperature: float) -> None:
    probs = tempered_probs(logits, temperature)
    expected = torch.distributions.Categorical(probs=probs).entropy()
    torch.testing.assert_close(entropy(probs), expected, atol=1e-5, rtol=1e-5)


def test_candidates_without_top_k_is_full_sort() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 11), -1)
    cand = candidates(probs)
    assert cand.ids.shape == (3, 11)
    torch.testing.assert_close(cand.to_dense(11), probs)


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"temperature": -0.5}, "temperature=-0.5"),
        ({"temperature": NAN}, "temperature=nan"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"top_p": -0.1}, "top_p=-0.1"),
        ({"top_k": -1}, "top_k=-1"),
        ({"top_k": 2.5}, "top_k=2.5"),
        ({"min_p": -0.01}, "min_p=-0.01"),
        ({"min_p": 1.01}, "min_p=1.01"),
    ],
)
def test_bad_filter_values_raise(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        FilterConfig(**kwargs)


def test_top_k_larger_than_vocabulary_raises() -> None:
    probs = torch.softmax(torch.randn(2, 10), -1)
    with pytest.raises(ValueError, match=r"top_k=11 exceeds the vocabulary size 10"):
        candidates(probs, 11)
    assert candidates(probs, 10).ids.shape == (2, 10)  # K == V is allowed


# --- underflow and overflow: tiny temperatures, tiny or huge weights, half-precision inputs -----------------


def test_tiny_temperature_keeps_far_apart_logits_in_order() -> None:
    # (logits - max) / T cannot overflow: dividing first sent 1e35 / 1e-4 and 5e34 / 1e-4 both to +inf
    # (then shared the mass) and -1e35 / 1e-4, -2e35 / 1e-4 both to -inf (a "dead" row, made uniform).
    logits = torch.tensor([[1e35, 5e34, -1e35], [-1e35, -2e35, -INF], [3.0, 2.9, -3.0]])
    probs = tempered_probs(logits, 1e-4)
    torch.testing.assert_close(probs, torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), atol=0, rtol=0)


@pytest.mark.parametrize("temperature", [1e-38, 1e-45, 1e-50, 1e-300])
def test_temperature_below_float32_range_is_greedy_with_shared_ties(temperature: float) -> None:
    # 1e-50 is 0 in float32, where x / T would make the maximum 0 / 0 = NaN.
    logits = torch.tensor([[1.0, 0.5, 1.0, -INF], [2.0, -1.0, 0.0, 1.999]])
    probs = tempered_probs(logits, temperature)
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0.0, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]]), atol=0, rtol=0)


def test_infinite_temperature_is_uniform_over_the_finite_logits() -> None:
    logits = torch.tensor([[1.0, -INF, 300.0, NAN], [INF, 0.0, INF, 1.0]])
    probs = tempered_probs(logits, INF)
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.5, 0.0, 0.5, 0.0]]), atol=0, rtol=0)


#: Ordinary float32 logits (scaled up by the tests below).
LOGIT_32 = st.floats(-30, 30, width=32)


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(torch.float32, 1.0), (torch.float32, 1e30), (torch.float32, 1e36), (torch.bfloat16, 1e36),
     (torch.bfloat16, 1.0), (torch.float16, 1.0), (torch.float16, 1e3)],
    ids=str,
)
@pytest.mark.parametrize("temperature", [1e-4, 0.01, 0.6, 5.0, 1e3])
@settings(max_examples=15, deadline=None)
@given(values=arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(2, 12)), elements=LOGIT_32))
def test_tempered_probs_match_a_float64_softmax(
    values: np.ndarray, temperature: float, dtype: torch.dtype, scale: float
) -> None:
    # Logits of any magnitude the dtype holds (scale 1e36: |logit| up to 3e37, so logit / 1e-4 overflows float32)
    # give the float64 softmax of the same logits: float64 cannot overflow on |logit| / T <= 3.4e42. Half-precision
    # logits are widened first: the result is float32.
    logits = (torch.from_numpy(values) * scale).to(dtype)
    probs = tempered_probs(logits, temperature)
    assert probs.dtype == torch.float32
    assert_distribution_rows(probs)
    expected = torch.softmax(logits.double() / temperature, -1)
    # float32 rounds (logits - max) to 6e-8 relative: at most ~1e-6 absolute on a probability.
    torch.testing.assert_close(probs.double(), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([[3e-31, 1e-31, 0.0]], [[0.75, 0.25, 0.0]]),  # the total 4e-31 was clamped to 1e-30: rows summed to 0.4
        ([[3e-40, 1e-40]], [[0.75, 0.25]]),  # subnormal float32 weights
        ([[3e38, 3e38, 0.0]], [[0.5, 0.5, 0.0]]),  # the total overflows to inf (was 0, 0, 0)
        ([[INF, 1.0, INF]], [[0.5, 0.0, 0.5]]),  # +inf entries share the mass (was NaN)
        ([[0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]]),  # no mass: the first entry
    ],
)
def test_renormalize_at_the_ends_of_the_float_range(weights: list, expected: list) -> None:
    torch.testing.assert_close(renormalize(torch.tensor(weights)), torch.tensor(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("dtype", "exponent"),
    [(torch.float32, e) for e in (-44, -40, -37, -31, -10, 0, 10, 30, 37, 38)]
    + [(torch.bfloat16, e) for e in (-40, -31, 0, 37, 38)]
    + [(torch.float16, e) for e in (-7, -5, 0, 4)],
    ids=str,
)
@settings(max_examples=10, deadline=None)
@given(values=arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 10)), elements=st.floats(0.0, 1.0)))
def test_renormalize_is_scale_free(values: np.ndarray, dtype: torch.dtype, exponent: int) -> None:
    # Any positive scale of a row gives the same distribution, in the input dtype: totals near the bottom of the
    # range (10^-44 is subnormal in float32, 10^-7 in float16) or overflowing it (10 entries of up to 10^38).
    values[:, 0] = np.maximum(values[:, 0], 0.5)  # some mass in every row
    weights = (torch.from_numpy(values) * 10.0**exponent).to(dtype)
    out = renormalize(weights)
    assert out.dtype == dtype
    assert torch.isfinite(out).all() and (out >= 0).all()
    expected = weights.double() / weights.double().sum(-1, keepdim=True)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.double(), expected, atol=2 * eps, rtol=2 * eps)
    torch.testing.assert_close(out.double().sum(-1), torch.ones(out.shape[0], dtype=torch.float64),
                               atol=values.shape[1] * eps, rtol=0)


def test_filters_renormalise_tiny_rows() -> None:
    # min-p on a row of total 6e-31 (a caller's unnormalised scores): kept entries must still sum to 1.
    kept = min_p_filter(torch.tensor([[4e-31, 2e-31, 1e-32]]), 0.1)
    torch.testing.assert_close(kept, torch.tensor([[2 / 3, 1 / 3, 0.0]]))
    # top-p's running mass is taken in float32 for half weights: 0.5 + 0.25 must not round past 0.75.
    half = torch.tensor([[0.5, 0.25, 0.125, 0.125]], dtype=torch.float16)
    torch.testing.assert_close(top_p_filter(half, 0.75).float(), torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]]),
                               atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_entropy_of_half_precision_probs_with_zeros(dtype: torch.dtype) -> None:
    # 0 log 0 = 0: clamping 0 to 1e-30 is a no-op in float16 (1e-30 rounds to 0), so 0 * log 0 was NaN.
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=dtype)
    ent = entropy(probs)
    assert ent.dtype == torch.float32
    torch.testing.assert_close(ent, torch.tensor([math.log(2), 0.0, math.log(4)]), atol=1e-6, rtol=0)
