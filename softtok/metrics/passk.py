"""pass@k: the unbiased estimator and a DDP-safe torchmetrics accumulator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

__all__ = ["pass_at_k", "PassAtK", "validate_ks"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from ``n`` samples of which ``c`` are correct.

    ``1 - C(n - c, k) / C(n, k)`` (Chen et al., 2021), computed as the numerically stable
    product ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``.

    Args:
        n: Samples drawn for the problem, ``>= 1``.
        c: Correct samples, ``0 <= c <= n``.
        k: Budget, ``1 <= k <= n``.

    Returns:
        The probability that at least one of ``k`` samples drawn without replacement is correct.

    Raises:
        ValueError: If the counts are not integers in the ranges above.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"pass_at_k: {name}={value!r} must be an integer")
    n, c, k = int(n), int(c), int(k)
    if n < 1:
        raise ValueError(f"pass_at_k: n={n} must be >= 1")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} must lie in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must lie in [1, n={n}] (cannot estimate pass@{k} from {n} samples)")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Check a collection of pass@k budgets: non-empty, positive integers; returns them sorted and unique."""
    if isinstance(ks, int):
        ks = (ks,)
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks={ks!r} must be a non-empty sequence of integers >= 1")
    return tuple(sorted(set(ks)))


def as_1d_tensor(values: Any, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Turn a list / tensor of per-sample values into a flat tensor on ``device``."""
    tensor = torch.as_tensor(values, device=device)
    if tensor.ndim > 1:
        raise ValueError(f"{name} must be 1-D (one value per sample), got shape {tuple(tensor.shape)}")
    return tensor.reshape(-1).to(dtype)


def cat_state(state: list[torch.Tensor] | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Concatenate a ``"cat"`` list state (after DDP sync it may already be a tensor); empty -> empty tensor."""
    if isinstance(state, torch.Tensor):
        return state.reshape(-1)
    if not state:
        return torch.empty(0, dtype=dtype, device=device)
    return torch.cat([s.reshape(-1) for s in state])


def first_occurrences(problem: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Indices (in input order) of the first row of each ``(problem, sample)`` pair.

    Rows with ``sample < 0`` (no sample id given) are always kept. Dropping repeated pairs
    undoes the padding that ``DistributedSampler`` adds to even out ranks.
    """
    if problem.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=problem.device)
    positions = torch.arange(problem.numel(), device=problem.device)
    sample = torch.where(sample < 0, -1 - positions, sample)  # unique negative ids: never merged
    _, inverse = torch.unique(torch.stack([problem, sample], dim=1), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), problem.numel(), dtype=torch.long, device=problem.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return first.sort().values


def pass_at_k_table(problem: torch.Tensor, correct: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Mean over problems of :func:`pass_at_k`, for each ``k``; ``NaN`` when there are no rows.

    Raises:
        ValueError: If some problem has fewer than ``k`` samples.
    """
    if problem.numel() == 0:
        return {f"pass@{k}": float("nan") for k in ks}
    ids, inverse = torch.unique(problem, return_inverse=True)
    n = torch.zeros(ids.numel(), dtype=torch.long, device=problem.device).scatter_add_(
        0, inverse, torch.ones_like(inverse)
    )
    c = torch.zeros_like(n).scatter_add_(0, inverse, correct.long())
    counts = list(zip(ids.tolist(), n.tolist(), c.tolist(), strict=True))
    out = {}
    for k in ks:
        short = [(pid, ni) for pid, ni, _ in counts if ni < k]
        if short:
            pid, ni = short[0]
            raise ValueError(
                f"pass@{k} needs >= {k} samples for every problem, but {len(short)} problem(s) have fewer "
                f"(e.g. problem {pid} has {ni}); sample more (n_samples >= {k}) or drop k={k}"
            )
        out[f"pass@{k}"] = sum(pass_at_k(ni, ci, k) for _, ni, ci in counts) / len(counts)
    return out


class PassAtK(Metric):
    """pass@k over problems, accumulated across batches and synced across DDP ranks.

    Every sample is one row ``(problem id, sample id, correct)``; states are concatenated
    across ranks (``dist_reduce_fx="cat"``), so a problem's samples may be spread over
    ranks and batches. :meth:`compute` counts ``n`` and ``c`` per problem and averages
    :func:`pass_at_k` over problems. When sample ids are given, repeated
    ``(problem, sample)`` rows (e.g. ``DistributedSampler`` padding) count once.

    Args:
        ks: Budgets to report, e.g. ``(1, 4)`` -> ``{"pass@1": ..., "pass@4": ...}``.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Example:
        >>> metric = PassAtK(ks=(1, 2))
        >>> metric.update([0, 0, 1, 1], torch.tensor([True, False, False, False]))
        >>> metric.compute()
        {'pass@1': 0.25, 'pass@2': 0.5}
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, ks: Sequence[int] = (1,), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ks = validate_ks(ks)
        self.add_state("problem", default=[], dist_reduce_fx="cat")
        self.add_state("sample", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")

    def update(
        self,
        problem_ids: Sequence[int] | torch.Tensor,
        correct: Sequence[bool] | torch.Tensor,
        sample_ids: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        """Add one batch of samples.

        Args:
            problem_ids: Problem index of each sample, shape ``[N]``.
            correct: Whether each sample is correct, shape ``[N]``.
            sample_ids: Optional sample index of each sample within its problem, ``[N]``;
                used to drop duplicated rows.
        """
        problem = as_1d_tensor(problem_ids, "problem_ids", torch.long, self.device)
        ok = as_1d_tensor(correct, "correct", torch.long, self.device)
        sample = (
            torch.full_like(problem, -1)
            if sample_ids is None
            else as_1d_tensor(sample_ids, "sample_ids", torch.long, self.device)
        )
        if not problem.numel() == ok.numel() == sample.numel():
            raise ValueError(
                f"problem_ids ({problem.numel()}), correct ({ok.numel()}) and sample_ids ({sample.numel()}) "
                "must have one entry per sample"
            )
        self.problem.append(problem)
        self.sample.append(sample)
        self.correct.append(ok)

    def compute(self) -> dict[str, float]:
        """``{"pass@k": mean over problems}`` for each configured ``k``."""
        problem = cat_state(self.problem, torch.long, self.device)
        sample = cat_state(self.sample, torch.long, self.device)
        correct = cat_state(self.correct, torch.long, self.device)
        keep = first_occurrences(problem, sample)
        return pass_at_k_table(problem[keep], correct[keep], self.ks)
