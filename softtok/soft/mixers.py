"""Mixers: turn filtered candidates into the :class:`SoftToken` fed to the model.

Every mixer is a small ``nn.Module`` whose ``forward(ids, weights)`` takes sorted,
renormalised candidates ``[B, C]`` and returns mixture components ``[B, K]``
(weights >= 0, rows summing to 1, in the dtype of ``weights``), sorted by weight except
:class:`MultiplexMixer`'s, which keep sample order; ``ids[:, 0]`` is always the shown token. Tensors in, tensors out,
no Python-side data dependence: each mixer compiles to one graph. Random mixers draw from
a :class:`~softtok.soft.random.RowRandom` (``forward(ids, weights, rng)``): a row's draws
depend only on its seed and step, never on the other rows of the batch. Without ``rng``
fresh row seeds come from torch's global generator, so ``torch.manual_seed`` makes a run
reproducible.

The arithmetic runs in at least float32 (float64 where the draws need it), whatever the
input dtype, so that no parameter value (``alpha``, ``tau``) can underflow a row to zero
or overflow it to NaN.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from softtok.soft.filters import check_range, entropy, renormalize, working_dtype
from softtok.soft.random import RowRandom
from softtok.soft.token import SoftToken

#: Dirichlet resampling drops candidates with ``p <= DIRICHLET_DROP`` (as the reference code does).
DIRICHLET_DROP = 1e-7


def _sort_desc(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weights, order = torch.sort(weights, dim=-1, descending=True, stable=True)
    return ids.gather(-1, order), weights


def _softmax_of_scores(scores: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scores / scale)`` that stays exact for any ``scale`` in ``(0, inf]``.

    The row maximum is subtracted *before* dividing, so the largest entry is exactly
    ``0 / scale = 0`` (weight 1 before normalising) however small ``scale`` is, and the
    others are ``<= 0`` (``-inf`` at worst: weight 0, never NaN). ``-inf`` scores stay
    ``-inf`` (no weight) also for ``scale = inf``. A row needs one finite score.
    """
    shifted = scores - scores.amax(-1, keepdim=True)
    shifted = torch.where(torch.isneginf(scores), float("-inf"), shifted / scale)
    weights = torch.exp(shifted)
    return weights / weights.sum(-1, keepdim=True)  # the total is >= 1: the maximum contributes exp(0)


def _rows(rng: RowRandom | None, weights: torch.Tensor) -> RowRandom:
    """``rng``, or fresh row seeds from torch's global generator."""
    return rng if rng is not None else RowRandom.from_torch(weights.shape[0], weights.device)


class Mixer(nn.Module):
    """Base class. Subclasses implement ``forward(ids, weights, rng=None) -> (ids, weights)``.

    Args:
        max_topk: Number of mixture components kept (``K``), at least 1.
    """

    def __init__(self, max_topk: int) -> None:
        super().__init__()
        if int(max_topk) != max_topk or max_topk < 1:
            raise ValueError(f"max_topk={max_topk!r} must be an integer >= 1")
        self.max_topk = int(max_topk)

    def mix(self, candidates: SoftToken, rng: RowRandom | None = None) -> SoftToken:
        """Mix sorted candidates into a :class:`SoftToken` (random mixers draw from ``rng``)."""
        return SoftToken(*self(candidates.ids, candidates.weights, rng))

    def _cut(self, ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids[:, : self.max_topk], renormalize(weights[:, : self.max_topk])


class TopKMixer(Mixer):
    """Soft Thinking: keep the ``max_topk`` largest weights and renormalise."""

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, rng: RowRandom | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._cut(ids, weights)


class DirichletMixer(Mixer):
    """Dirichlet resampling ``p' ~ Dir(alpha * p)`` of the filtered distribution, then the top-K cut.

    Randomised Soft Thinking ("LLMs are Single-threaded Reasoners", 2025) resamples the
    whole filtered candidate set from a Dirichlet centred on it, ``E[p'_i] = p_i`` and
    ``Var[p'_i] = p_i (1 - p_i) / (alpha + 1)``, then keeps the ``max_topk`` largest
    weights, renormalised. Candidates with ``p <= 1e-7`` are dropped first (weight exactly
    0), as in the reference code; a row's largest candidate is always kept.

    A Dirichlet draw is ``p'_i = G_i / sum_j G_j`` with ``G_i ~ Gamma(a_i, 1)``,
    ``a_i = alpha * p_i``. For a small shape the Gamma draw itself underflows
    (``P(G < x) ~ x^a / Gamma(a + 1)``: at ``a = 1e-3``, 9 draws in 10 fall below the
    smallest normal float32, 1.2e-38), which used to collapse whole rows. So the draws are
    taken in log space with the small-shape boost of Marsaglia & Tsang (2000, "A simple
    method for generating gamma variables", ACM TOMS 26(3)),
    ``Gamma(a) = Gamma(a + 1) * U^(1/a)`` with ``U ~ U(0, 1]``::

        log G_i = log Gamma(a_i + 1) + log(U_i) / a_i
        p'      = softmax(log G)                      # float64, max-subtracted

    The shape ``a_i + 1 >= 1`` never underflows, and the softmax puts exactly 1 on the
    largest draw before normalising, so a row sums to 1 for every ``alpha > 0``. So that
    ``log(U) / a`` stays finite even when ``a_i`` underflows float64 (``alpha`` down to
    5e-324), the scores are computed scaled by ``s = min(alpha, 1)``,
    ``s * log G_i = s * log Gamma(a_i + 1) + log(U_i) * (s / alpha) / p_i``, and
    ``p' = softmax(scaled / s)`` with the maximum subtracted before dividing. As
    ``alpha -> 0`` all the mass goes to one candidate, candidate ``i`` with probability
    ``p_i``; as ``alpha -> inf`` the draw tends to ``p`` (``alpha = inf`` returns ``p``).

    Args:
        max_topk: Components kept after resampling.
        alpha: Concentration scale, > 0; large alpha reproduces ``p``, small alpha gives
            nearly one-hot draws.
    """

    def __init__(self, max_topk: int = 10, alpha: float = 4.0) -> None:
        super().__init__(max_topk)
        check_range("alpha", alpha, 0.0, float("inf"), low_open=True)
        self.alpha = float(alpha)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, rng: RowRandom | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        p = weights.double()
        top = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, p.argmax(-1, keepdim=True), True)
        keep = (p > DIRICHLET_DROP) | top
        if math.isinf(self.alpha):  # the limit: no noise
            resampled = torch.where(keep, p, 0.0)
        else:
            scale = min(self.alpha, 1.0)
            p_kept = torch.where(keep, p, 1.0).clamp_min(DIRICHLET_DROP)  # > 0; only the kept entries matter
            rng = _rows(rng, p)
            log_boosted = rng.child(0).gamma(self.alpha * p_kept + 1.0)  # log Gamma(a + 1): finite
            log_u = torch.log(rng.child(1).uniform(p.shape[-1]))  # U in (0, 1): finite
            scores = scale * log_boosted + log_u * (scale / self.alpha) / p_kept
            resampled = _softmax_of_scores(torch.where(keep, scores, float("-inf")), scale)
        ids, resampled = _sort_desc(ids, resampled)
        ids, resampled = self._cut(ids, resampled)
        return ids, resampled.to(weights.dtype)


class GumbelMixer(Mixer):
    """Gumbel-Softmax over the top-K weights: ``softmax((log w + g) / tau)``, re-sorted.

    ``g_i = -log(-log U_i)`` are standard Gumbel draws (Jang et al. 2017, "Categorical
    reparameterization with Gumbel-Softmax"). After re-sorting, the shown token
    (``ids[:, 0]``) is a Gumbel-max sample of ``w`` as long as the mixed weights stay
    distinct in float64 (at a huge ``tau``, 1e30 or ``inf``, they tie and the stable sort
    shows the highest-``w`` id). The softmax is taken
    in float64 with the row maximum subtracted before dividing by ``tau``, so a tiny ``tau``
    gives the exact one-hot of the Gumbel-max sample (never ``inf / inf = NaN``) and
    ``tau = inf`` the uniform mixture over the kept support.

    Args:
        max_topk: Components kept.
        tau: Gumbel-Softmax temperature, > 0.
    """

    def __init__(self, max_topk: int = 10, tau: float = 0.5) -> None:
        super().__init__(max_topk)
        check_range("tau", tau, 0.0, float("inf"), low_open=True)
        self.tau = float(tau)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, rng: RowRandom | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        ids, cut = self._cut(ids, weights.to(working_dtype(weights.dtype)))
        gumbel = _rows(rng, cut).gumbel(cut.shape[-1])  # float64, U in (0, 1): finite
        mixed = _softmax_of_scores(torch.log(cut.double()) + gumbel, self.tau)
        ids, mixed = _sort_desc(ids, mixed)
        return ids, mixed.to(weights.dtype)


class MixtureOfInputsMixer(Mixer):
    """Mixture of Inputs: blend the top-K distribution with a sampled token by normalised entropy.

    ``q = (p_K + beta * onehot(s)) / (1 + beta)``, ``Hn = H(p_K) / ln K`` and the input is
    ``Hn * q + (1 - Hn) * onehot(s)``, with ``s`` sampled from ``p_K``. Computed in at
    least float32 (``0 log 0 = 0``), returned in the input dtype.

    Args:
        max_topk: ``K``, default 20.
        beta: Weight of the sampled token in ``q``, >= 0.
    """

    def __init__(self, max_topk: int = 20, beta: float = 1.0) -> None:
        super().__init__(max_topk)
        check_range("beta", beta, 0.0, float("inf"))
        self.beta = float(beta)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, rng: RowRandom | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        ids, cut = self._cut(ids, weights.to(working_dtype(weights.dtype)))
        k = cut.shape[-1]
        sampled = _rows(rng, cut).categorical(cut)
        onehot = torch.zeros_like(cut).scatter_(-1, sampled, 1.0)
        q = (cut + self.beta * onehot) / (1.0 + self.beta)
        ent = entropy(cut)[:, None]
        hn = (ent / math.log(k)).clamp(0.0, 1.0) if k > 1 else torch.zeros_like(ent)
        ids, mixed = _sort_desc(ids, hn * q + (1.0 - hn) * onehot)
        return ids, mixed.to(weights.dtype)


class HardMixer(Mixer):
    """Discrete decoding as a one-component mixture: the argmax, or a sample.

    Sampling draws one candidate with probability equal to its (filtered) weight, by
    inverse CDF over the candidates (:meth:`~softtok.soft.random.RowRandom.categorical`):
    the distribution of HF ``generate``'s sampling with the same filters, drawn from the
    row's own counter-based stream.

    Args:
        sample: Sample instead of taking the argmax.
    """

    def __init__(self, sample: bool = False) -> None:
        super().__init__(1)
        self.sample = bool(sample)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, rng: RowRandom | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = ids.gather(-1, _rows(rng, weights).categorical(weights)) if self.sample else ids[:, :1]
        return chosen, torch.ones_like(chosen, dtype=weights.dtype)


#: How :class:`MultiplexMixer` merges its samples.
MULTIPLEX_MERGES = ("weighted", "mean")


class MultiplexMixer(Mixer):
    """Multiplex Thinking: ``width`` independent samples from the filtered distribution, merged.

    Multiplex Thinking (Tang et al. 2026, ``GMLR-Penn/Multiplex-Thinking``, its sglang
    sampler's ``enable_replacement`` path) draws ``width`` tokens ``s_1..s_W`` independently
    (with replacement) from the filtered candidates and feeds the merge of their
    embeddings: probability-weighted, ``w_j = p(s_j) / sum_i p(s_i)`` (``merge="weighted"``,
    the default of its evaluation scripts), or the plain mean, ``w_j = 1 / W``
    (``merge="mean"``, its ``enable_unweighting``). A token drawn twice appears as two
    components, so it counts twice. The components are returned in **sample order**, not
    sorted: ``ids[:, 0]``, the shown token, is the first sample, as in the reference. With
    ``width=1`` the one sample is exactly :class:`HardMixer` sampling from the same stream.

    Args:
        width: Samples per step ``W`` (the reference's ``multiplex_width``, default 3), >= 1.
        merge: ``weighted`` or ``mean``.

    Raises:
        ValueError: For ``width`` < 1 or an unknown ``merge``.
    """

    def __init__(self, width: int = 3, merge: str = "weighted") -> None:
        if int(width) != width or width < 1:
            raise ValueError(f"width={width!r} must be an integer >= 1 (samples merged per step)")
        if merge not in MULTIPLEX_MERGES:
            raise ValueError(f"merge={merge!r} is unknown; allowed: {', '.join(MULTIPLEX_MERGES)}")
        super().__init__(width)
        self.merge = merge

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, rng: RowRandom | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        picks = _rows(rng, weights).categorical(weights, self.max_topk)  # [B, W] positions in the candidates
        if self.merge == "mean":
            merged = torch.full(picks.shape, 1.0 / self.max_topk, dtype=weights.dtype, device=weights.device)
        else:
            merged = renormalize(weights.gather(-1, picks))  # (computed in at least float32)
        return ids.gather(-1, picks), merged


MIXERS: dict[str, type[Mixer]] = {
    "topk": TopKMixer,
    "dirichlet": DirichletMixer,
    "gumbel": GumbelMixer,
    "moi": MixtureOfInputsMixer,
    "hard": HardMixer,
    "multiplex": MultiplexMixer,
}


def build_mixer(name: str, **kwargs) -> Mixer:
    """Build a mixer by name: one of ``topk``, ``dirichlet``, ``gumbel``, ``moi``, ``hard``, ``multiplex``.

    Args:
        name: Mixer name.
        **kwargs: The mixer's constructor arguments.

    Raises:
        ValueError: For an unknown name.
    """
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; allowed: {', '.join(MIXERS)}")
    return MIXERS[name](**kwargs)
