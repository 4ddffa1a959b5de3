"""The :class:`SoftToken` value: a sparse mixture over the vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SoftToken:
    """A batch of sparse token mixtures.

    Row ``b`` stands for the input embedding ``sum_k weights[b, k] * E[ids[b, k]]``.
    Components are sorted by weight, descending, so ``ids[:, 0]`` is the token shown
    for the step (the top-1). Filtered-out components keep weight 0.

    Attributes:
        ids: Token ids, ``[B, K]`` (int64).
        weights: Mixture weights, ``[B, K]``, non-negative, each row summing to 1.
    """

    ids: torch.Tensor
    weights: torch.Tensor

    @property
    def top1(self) -> torch.Tensor:
        """The shown token of each row, ``[B]``."""
        return self.ids[:, 0]

    def to_dense(self, vocab_size: int) -> torch.Tensor:
        """Scatter the mixture into a dense ``[B, V]`` distribution (for training paths)."""
        dense = self.weights.new_zeros(self.weights.shape[0], vocab_size)
        return dense.scatter_add_(1, self.ids, self.weights)

    @staticmethod
    def one_hot(ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> SoftToken:
        """A hard token as a one-component mixture (``ids`` is ``[B]``)."""
        return SoftToken(ids[:, None], torch.ones(ids.shape[0], 1, dtype=dtype, device=ids.device))
