"""Pure filtering functions on next-token distributions (Soft Thinking order).

The Soft Thinking step is ``softmax(logits / T)`` -> entropy -> top-k -> top-p ->
min-p, renormalising after each filter. Filters work on a *candidate set*: the
distribution sorted descending as a :class:`~softtok.soft.token.SoftToken`, so that
with top-k enabled nothing after the first cut touches the full vocabulary.
Every filter keeps the row's argmax, so no row is ever emptied (no NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softtok.soft.token import SoftToken


def check_range(name: str, value: float, low: float, high: float, *, low_open=False, high_open=False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the interval."""
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} is outside the allowed range {interval}")


@dataclass(frozen=True)
class FilterConfig:
    """Sampling filters applied before mixing.

    Attributes:
        temperature: Softmax temperature; ``0`` means greedy (all mass on the argmax).
        top_k: Keep the ``top_k`` most likely tokens; ``0`` disables.
        top_p: Nucleus filter, in ``(0, 1]``; ``1`` disables.
        min_p: Drop tokens below ``min_p * max p``, in ``[0, 1]``; ``0`` disables.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self) -> None:
        check_range("temperature", self.temperature, 0.0, float("inf"))
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r} must be an integer >= 0 (0 disables)")
        check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        check_range("min_p", self.min_p, 0.0, 1.0)


def tempered_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / T)`` in fp32; ``T == 0`` gives the argmax one-hot.

    NaN logits count as ``-inf`` (no mass); ``+inf`` ones share the mass. Rows that are
    entirely ``-inf`` (or NaN) become uniform instead of NaN.
    """
    logits = logits.float()
    # nan_to_num's default would turn -inf into the lowest finite float, which a T < 1 then
    # overflows back to -inf; keep -inf explicit so all-(-inf) rows are detected below.
    if temperature == 0:
        logits = torch.nan_to_num(logits, nan=float("-inf"), neginf=float("-inf"))
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    # Divide first, then clamp +inf to the largest float so the softmax's max-subtraction stays finite.
    logits = torch.nan_to_num(
        logits / temperature, nan=float("-inf"), posinf=torch.finfo(torch.float32).max, neginf=float("-inf")
    )
    dead = torch.isneginf(logits).all(-1, keepdim=True)
    logits = torch.where(dead, torch.zeros_like(logits), logits)
    return torch.softmax(logits, dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each row of ``probs`` (``0 log 0 = 0``)."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)


def candidates(probs: torch.Tensor, top_k: int = 0) -> SoftToken:
    """The ``top_k`` most likely tokens (all tokens if ``top_k == 0``), sorted, renormalised."""
    vocab = probs.shape[-1]
    if top_k > vocab:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {vocab}")
    if top_k and top_k < vocab:
        weights, ids = torch.topk(probs, top_k, dim=-1)
    else:
        weights, ids = torch.sort(probs, dim=-1, descending=True)
    return SoftToken(ids, renormalize(weights))


def renormalize(weights: torch.Tensor) -> torch.Tensor:
    """Scale rows to sum to 1; a row with no mass puts it all on its first entry."""
    total = weights.sum(-1, keepdim=True)
    first = torch.zeros_like(weights)
    first[..., 0] = 1.0
    return torch.where(total > 0, weights / total.clamp_min(1e-30), first)


def top_p_filter(weights: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter on descending-sorted ``weights``: keep the smallest prefix with mass >= ``top_p``."""
    if top_p >= 1.0:
        return weights
    mass_before = torch.cumsum(weights, dim=-1) - weights
    return renormalize(torch.where(mass_before < top_p, weights, torch.zeros_like(weights)))


def min_p_filter(weights: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop entries below ``min_p`` times the row maximum (the first entry of sorted ``weights``)."""
    if min_p <= 0.0:
        return weights
    keep = weights >= min_p * weights[..., :1]
    return renormalize(torch.where(keep, weights, torch.zeros_like(weights)))


def filter_candidates(probs: torch.Tensor, cfg: FilterConfig) -> SoftToken:
    """Apply top-k, top-p and min-p (in that order) to tempered ``probs``; sorted candidates out."""
    cand = candidates(probs, cfg.top_k)
    weights = min_p_filter(top_p_filter(cand.weights, cfg.top_p), cfg.min_p)
    return SoftToken(cand.ids, weights)
