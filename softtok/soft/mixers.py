"""Mixers: turn filtered candidates into the :class:`SoftToken` fed to the model.

Every mixer is a small ``nn.Module`` whose ``forward(ids, weights)`` takes sorted,
renormalised candidates ``[B, C]`` and returns sorted mixture components ``[B, K]``
(weights >= 0, rows summing to 1). Tensors in, tensors out, no Python-side data
dependence: each mixer compiles to one graph. Randomness comes from torch's global
generator, so ``torch.manual_seed`` makes a run reproducible.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from softtok.soft.filters import check_range, renormalize
from softtok.soft.token import SoftToken


def _sort_desc(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weights, order = torch.sort(weights, dim=-1, descending=True, stable=True)
    return ids.gather(-1, order), weights


class Mixer(nn.Module):
    """Base class. Subclasses implement ``forward(ids, weights) -> (ids, weights)``.

    Args:
        max_topk: Number of mixture components kept (``K``), at least 1.
    """

    def __init__(self, max_topk: int) -> None:
        super().__init__()
        if int(max_topk) != max_topk or max_topk < 1:
            raise ValueError(f"max_topk={max_topk!r} must be an integer >= 1")
        self.max_topk = int(max_topk)

    def mix(self, candidates: SoftToken) -> SoftToken:
        """Mix sorted candidates into a :class:`SoftToken`."""
        return SoftToken(*self(candidates.ids, candidates.weights))

    def _cut(self, ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids[:, : self.max_topk], renormalize(weights[:, : self.max_topk])


class TopKMixer(Mixer):
    """Soft Thinking: keep the ``max_topk`` largest weights and renormalise."""

    def forward(self, ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._cut(ids, weights)


class DirichletMixer(Mixer):
    """Dirichlet resampling ``p' ~ Dir(alpha * p)`` of the filtered distribution, then the top-K cut.

    Entries with ``p <= 1e-7`` are dropped before sampling (as in the reference code).

    Args:
        max_topk: Components kept after resampling.
        alpha: Concentration scale, > 0; large alpha reproduces ``p``.
    """

    def __init__(self, max_topk: int = 10, alpha: float = 4.0) -> None:
        super().__init__(max_topk)
        check_range("alpha", alpha, 0.0, float("inf"), low_open=True)
        self.alpha = float(alpha)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = weights > 1e-7
        concentration = torch.where(keep, weights * self.alpha, torch.ones_like(weights))
        draws = torch.where(keep, torch._standard_gamma(concentration), torch.zeros_like(weights))
        ids, draws = _sort_desc(ids, draws)
        return self._cut(ids, draws)


class GumbelMixer(Mixer):
    """Gumbel-Softmax over the top-K weights: ``softmax((log w + g) / tau)``, re-sorted.

    After re-sorting, the shown token (``ids[:, 0]``) is a Gumbel-max sample of ``w``.

    Args:
        max_topk: Components kept.
        tau: Gumbel-Softmax temperature, > 0.
    """

    def __init__(self, max_topk: int = 10, tau: float = 0.5) -> None:
        super().__init__(max_topk)
        check_range("tau", tau, 0.0, float("inf"), low_open=True)
        self.tau = float(tau)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, weights = self._cut(ids, weights)
        u = torch.rand_like(weights).clamp_(1e-10, 1.0 - 1e-7)
        gumbel = -torch.log(-torch.log(u))
        mixed = torch.softmax((torch.log(weights) + gumbel) / self.tau, dim=-1)
        return _sort_desc(ids, mixed)


class MixtureOfInputsMixer(Mixer):
    """Mixture of Inputs: blend the top-K distribution with a sampled token by normalised entropy.

    ``q = (p_K + beta * onehot(s)) / (1 + beta)``, ``Hn = H(p_K) / ln K`` and the input is
    ``Hn * q + (1 - Hn) * onehot(s)``, with ``s`` sampled from ``p_K``.

    Args:
        max_topk: ``K``, default 20.
        beta: Weight of the sampled token in ``q``, >= 0.
    """

    def __init__(self, max_topk: int = 20, beta: float = 1.0) -> None:
        super().__init__(max_topk)
        check_range("beta", beta, 0.0, float("inf"))
        self.beta = float(beta)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, weights = self._cut(ids, weights)
        k = weights.shape[-1]
        sampled = torch.multinomial(weights, 1)
        onehot = torch.zeros_like(weights).scatter_(-1, sampled, 1.0)
        q = (weights + self.beta * onehot) / (1.0 + self.beta)
        ent = -(weights * torch.log(weights.clamp_min(1e-30))).sum(-1, keepdim=True)
        hn = (ent / math.log(k)).clamp(0.0, 1.0) if k > 1 else torch.zeros_like(ent)
        return _sort_desc(ids, hn * q + (1.0 - hn) * onehot)


class HardMixer(Mixer):
    """Discrete decoding as a one-component mixture: the argmax, or a sample.

    Sampling draws ``torch.multinomial`` over the full vocabulary in id order, as
    Hugging Face ``generate`` does, so a fixed seed gives the same tokens.

    Args:
        sample: Sample instead of taking the argmax.
        vocab_size: Vocabulary size, required when ``sample`` is true.
    """

    def __init__(self, sample: bool = False, vocab_size: int | None = None) -> None:
        super().__init__(1)
        if sample and not vocab_size:
            raise ValueError("HardMixer(sample=True) needs vocab_size")
        self.sample = bool(sample)
        self.vocab_size = vocab_size

    def forward(self, ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sample:
            dense = weights.new_zeros(weights.shape[0], self.vocab_size).scatter_(-1, ids, weights)
            chosen = torch.multinomial(dense, 1)
        else:
            chosen = ids[:, :1]
        return chosen, torch.ones_like(chosen, dtype=weights.dtype)


MIXERS: dict[str, type[Mixer]] = {
    "topk": TopKMixer,
    "dirichlet": DirichletMixer,
    "gumbel": GumbelMixer,
    "moi": MixtureOfInputsMixer,
    "hard": HardMixer,
}


def build_mixer(name: str, **kwargs) -> Mixer:
    """Build a mixer by name: one of ``topk``, ``dirichlet``, ``gumbel``, ``moi``, ``hard``.

    Args:
        name: Mixer name.
        **kwargs: The mixer's constructor arguments.

    Raises:
        ValueError: For an unknown name.
    """
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; allowed: {', '.join(MIXERS)}")
    return MIXERS[name](**kwargs)
