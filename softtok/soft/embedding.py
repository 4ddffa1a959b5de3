"""Soft embedding: mix token embeddings through the model's own input embedding module.

Going through the module (not its raw ``weight``) keeps model-specific scaling, such
as Gemma's ``sqrt(D)`` factor, identical for hard and soft inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from softtok.soft.filters import (
    FilterConfig,
    check_range,
    entropy,
    filter_candidates,
    tempered_probs,
    working_dtype,
)
from softtok.soft.mixers import HardMixer, Mixer
from softtok.soft.random import RowRandom
from softtok.soft.token import SoftToken


def embedding_scale(embedding: nn.Module) -> torch.Tensor | float:
    """The factor the module applies on top of its weight rows (1 for a plain ``nn.Embedding``)."""
    return getattr(embedding, "embed_scale", 1.0)


def embed_sparse(embedding: nn.Module, soft: SoftToken) -> torch.Tensor:
    """``sum_k w_k * embedding(id_k)`` for ``[B, K]`` components: ``[B, D]``, no ``[B, V]`` product.

    The weighted sum is taken in at least float32 and cast to the embedding's dtype once,
    so half-precision models get the mixture of their rows rounded once: the weights are
    not first rounded to bfloat16 / float16 (where they would no longer sum to 1, and
    float16 flushes weights below ``6e-8`` to zero).
    """
    rows = embedding(soft.ids)  # [B, K, D]
    wide = working_dtype(rows.dtype)
    mixed = torch.bmm(soft.weights.to(wide)[:, None, :], rows.to(wide))[:, 0]
    return mixed.to(rows.dtype)


def embed_dense(embedding: nn.Module, probs: torch.Tensor) -> torch.Tensor:
    """``probs @ E`` (times the module's scale) for dense ``[..., V]`` distributions (training paths)."""
    weight = embedding.weight
    scale = embedding_scale(embedding)
    if torch.is_tensor(scale):
        scale = scale.to(weight.dtype)
    return (probs.to(weight.dtype) @ weight) * scale


def mixture_mean(logits: torch.Tensor, embedding: nn.Module, temperature: float, top_k: int = 0) -> torch.Tensor:
    """The dense mixture ``softmax(logits / T) @ E`` (times the module's scale): ``[..., V]`` -> ``[..., D]``.

    The mean input of a continuous-CoT step ("Soft Tokens, Hard Truths": the full
    vocabulary; ``top_k > 0`` keeps the ``k`` largest probabilities, renormalised). The
    rollout feeds it and the RL log-probability recomputes it with this one function.
    The distribution is :func:`~softtok.soft.filters.tempered_probs` (at least float32).
    """
    shape = logits.shape
    probs = tempered_probs(logits.reshape(-1, shape[-1]), temperature)
    if top_k:
        weights, ids = probs.topk(top_k, dim=-1)
        probs = torch.zeros_like(probs).scatter(-1, ids, weights / weights.sum(-1, keepdim=True))
    return embed_dense(embedding, probs).reshape(*shape[:-1], -1)


def embedding_rms(embedding: nn.Module) -> float:
    """Per-coordinate root-mean-square of the (scaled) embedding matrix."""
    weight = embedding.weight.detach().float()
    return float(weight.pow(2).mean().sqrt() * float(embedding_scale(embedding)))


def add_noise(embeds: torch.Tensor, sigma: float, rng: RowRandom | None = None) -> torch.Tensor:
    """Gaussian exploration noise ``embeds + sigma * N(0, I)`` for ``[B, D]`` embeds (identity for ``sigma == 0``).

    The draws come from ``rng`` (fresh row seeds from torch's global generator without it),
    taken in float64 and added in the embeddings' dtype.
    """
    if sigma == 0:
        return embeds
    rng = rng if rng is not None else RowRandom.from_torch(embeds.shape[0], embeds.device)
    return embeds + (sigma * rng.normal(embeds.shape[-1])).to(embeds.dtype)


def _rows(rng: RowRandom | None, like: torch.Tensor) -> RowRandom:
    """``rng``, or fresh row seeds from torch's global generator."""
    return RowRandom.from_torch(like.shape[0], like.device) if rng is None else rng


@dataclass(frozen=True)
class SoftStep:
    """One soft-token step.

    Attributes:
        token: The mixture fed to the model.
        embeds: Its input embedding, ``[B, D]``, noise included.
        entropy: Entropy of the tempered, unfiltered distribution, ``[B]``.
    """

    token: SoftToken
    embeds: torch.Tensor
    entropy: torch.Tensor


class SoftEmbedding(nn.Module):
    """The soft-token pipeline: logits -> filter -> mixer -> embedding -> noise.

    Args:
        embedding: The model's input embedding module (``model.get_input_embeddings()``).
        filters: Temperature and top-k / top-p / min-p filters.
        mixer: How filtered candidates become mixture weights.
        noise_factor: Gaussian noise sigma as a multiple of the embedding RMS, >= 0.
        compile: Run filter + mixer and the weighted sum under ``torch.compile``.
        dense: Embed the whole tempered distribution (:func:`mixture_mean`, restricted to
            ``filters.top_k`` when set) instead of the mixer's ``K`` components; the mixer's
            components still give the shown token and the recorded mixture.

    Raises:
        ValueError: For ``top_k`` or ``max_topk`` above the vocabulary, a negative
            ``noise_factor``, or ``dense`` with a top-p or min-p filter.

    Example:
        >>> soft = SoftEmbedding(model.get_input_embeddings(), FilterConfig(0.6, 30, 0.95), TopKMixer(10))
        >>> step = soft(logits[:, -1])   # step.embeds: [B, D]
    """

    def __init__(
        self,
        embedding: nn.Module,
        filters: FilterConfig,
        mixer: Mixer,
        noise_factor: float = 0.0,
        compile: bool = False,
        dense: bool = False,
    ) -> None:
        super().__init__()
        check_range("noise_factor", noise_factor, 0.0, float("inf"))
        if dense and (filters.top_p < 1.0 or filters.min_p > 0.0):
            raise ValueError(f"a dense mixture takes only a temperature and top_k (top_p={filters.top_p}, "
                             f"min_p={filters.min_p}); allowed: top_p 1.0 and min_p 0.0")
        vocab = embedding.weight.shape[0]
        for name, k in (("max_topk", mixer.max_topk), ("top_k", filters.top_k)):
            if k > vocab:
                raise ValueError(f"{name}={k} exceeds the vocabulary size {vocab}")
        self.embedding = embedding
        self.filters = filters
        self.mixer = mixer
        self.dense = dense
        self.sigma = noise_factor * embedding_rms(embedding) if noise_factor else 0.0
        # dynamic=None: the first change of batch size (rows finishing in the generator) recompiles
        # once with a symbolic batch dimension, instead of once per size up to the recompile limit.
        self._mix = torch.compile(self.mix_logits, dynamic=None) if compile else self.mix_logits
        self._embed = torch.compile(self.embed, dynamic=None) if compile else self.embed

    def mix_logits(self, logits: torch.Tensor, rng: RowRandom | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Filter and mix ``[B, V]`` logits; returns ``(ids, weights, entropy)``.

        ``rng``: the rows' random streams (``None``: fresh seeds from torch's global generator).

        Greedy decoding (temperature 0 with a :class:`~softtok.soft.HardMixer`) takes the
        argmax directly: the tempered distribution is its one-hot, whose entropy is 0 and
        whose filtering and sampling return it, so the passes over the vocabulary are skipped.
        """
        if self.filters.temperature == 0 and isinstance(self.mixer, HardMixer):
            ids = torch.where(logits == logits, logits, float("-inf")).argmax(-1, keepdim=True)  # NaN counts as -inf
            weights = torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
            return ids, weights, torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device)
        probs = tempered_probs(logits, self.filters.temperature)
        cand = filter_candidates(probs, self.filters)
        ids, weights = self.mixer(cand.ids, cand.weights, _rows(rng, logits).child(0))
        return ids, weights, entropy(probs)

    def embed(self, ids: torch.Tensor, weights: torch.Tensor, rng: RowRandom | None = None) -> torch.Tensor:
        """Noisy soft embedding of the components ``[B, K]`` (noise from ``rng``'s stream)."""
        return add_noise(embed_sparse(self.embedding, SoftToken(ids, weights)), self.sigma, _rows(rng, ids).child(1))

    def forward(self, logits: torch.Tensor, rng: RowRandom | None = None) -> SoftStep:
        """Turn next-token logits ``[B, V]`` into the next input embedding.

        Args:
            logits: ``[B, V]`` next-token logits.
            rng: The rows' random streams (random mixers and noise); without it, fresh row
                seeds from torch's global generator.
        """
        rng = _rows(rng, logits)
        ids, weights, ent = self._mix(logits, rng)
        if self.dense:
            mean = mixture_mean(logits, self.embedding, self.filters.temperature, self.filters.top_k)
            return SoftStep(SoftToken(ids, weights), add_noise(mean, self.sigma, rng.child(1)), ent)
        return SoftStep(SoftToken(ids, weights), self._embed(ids, weights, rng), ent)
