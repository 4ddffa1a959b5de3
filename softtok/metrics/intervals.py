"""Confidence intervals of the accuracies the results pages report."""

from __future__ import annotations

import math


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``correct / n`` (Wilson 1927; 95% at ``z = 1.96``).

    Unlike the normal approximation it stays inside ``[0, 1]`` and is not empty at 0 or ``n``.

    Returns:
        ``(low, high)``; ``(0.0, 1.0)`` for ``n = 0`` (no evidence).

    Raises:
        ValueError: ``correct`` outside ``[0, n]``.
    """
    if not 0 <= correct <= n:
        raise ValueError(f"correct={correct!r} must be in [0, n={n!r}]")
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
