"""Reward functions for RL on chains of thought, and their checked, weighted combination.

A reward function is any callable ``fn(prompts, completions, references) -> list[float]``
(one number per completion; the lists are aligned), as in TRL. ``references`` holds each
completion's reference answer, or a record (a dict with ``"answer"`` and, for
reasoning-gym tasks, a ``"scorer"``: the task's ``score_answer`` bound to its entry).

Built in:

* :func:`correctness_reward`: 1 if the answer extracted from the completion
  (:func:`~softtok.answers.extract_answer`) is correct (:func:`~softtok.answers.check_answer`:
  the record's reasoning-gym scorer when it has one, else exact and math-verify
  equivalence), else 0;
* :func:`shaped_reward`: "Soft Tokens, Hard Truths"'s reward: 100 if correct, 10 if the
  completion has a closed ``\\boxed{...}`` but is wrong, 0 otherwise;
* :func:`format_reward`: 1 if a final answer can be extracted at all (``\\boxed{}``,
  ``Final answer:``, ``####``, a last number), else 0.

:func:`score_rewards` calls several functions, checks every output (length, numbers,
finite; the error names the function) and sums them with weights.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from softtok.answers import check_answer, extract_answer, last_boxed

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[Any]], Sequence[float]]


def _answer_and_scorer(reference: Any) -> tuple[str, Callable[[str], float] | None]:
    if isinstance(reference, Mapping):
        return str(reference["answer"]), reference.get("scorer")
    return str(reference), None


def _correct(completion: str, reference: Any) -> bool:
    answer, scorer = _answer_and_scorer(reference)
    return check_answer(extract_answer(completion), answer, scorer)


def correctness_reward(prompts: Sequence[str], completions: Sequence[str], references: Sequence[Any]) -> list[float]:
    """1.0 for a correct final answer, else 0.0."""
    return [float(_correct(c, r)) for c, r in zip(completions, references, strict=True)]


def shaped_reward(prompts: Sequence[str], completions: Sequence[str], references: Sequence[Any]) -> list[float]:
    """100 if correct, 10 if boxed (a closed ``\\boxed{}``) but wrong, 0 otherwise ("Soft Tokens, Hard Truths")."""
    out = []
    for completion, reference in zip(completions, references, strict=True):
        if _correct(completion, reference):
            out.append(100.0)
        else:
            out.append(10.0 if last_boxed(completion) is not None else 0.0)
    return out


def format_reward(prompts: Sequence[str], completions: Sequence[str], references: Sequence[Any]) -> list[float]:
    """1.0 if a final answer can be extracted from the completion, else 0.0."""
    return [float(extract_answer(c) is not None) for c in completions]


#: Built-in reward functions by name (for configs).
REWARDS: dict[str, RewardFn] = {
    "correctness": correctness_reward,
    "shaped": shaped_reward,
    "format": format_reward,
}


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _import(path: str) -> Any:
    """The object at an import path ``package.module.name`` (or ``package.module:name``)."""
    module, sep, name = path.replace(":", ".").rpartition(".")
    allowed = f"allowed: {', '.join(REWARDS)}, an import path 'package.module.function', or a callable"
    if not sep or not module:
        raise ValueError(f"reward {path!r} is unknown; {allowed}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward {path!r} cannot be imported ({err}); {allowed}") from None


def resolve_rewards(rewards: Sequence[str | RewardFn], weights: Sequence[float] | None = None
                    ) -> tuple[list[RewardFn], list[float]]:
    """Reward functions and their weights (default 1 each).

    Args:
        rewards: Names from :data:`REWARDS`, import paths of functions (``"mypkg.rewards.length_bonus"``),
            or callables.
        weights: One weight per reward (``None``: all 1).

    Raises:
        ValueError: For no reward, an unknown name, a path that does not import, a non-callable,
            or weights of another length or not finite.
    """
    if not rewards:
        raise ValueError("rewards is empty; allowed: names from " + ", ".join(REWARDS) + " or callables")
    fns = []
    for reward in rewards:
        if isinstance(reward, str):
            reward = REWARDS[reward] if reward in REWARDS else _import(reward)
        if not callable(reward):
            raise ValueError(f"reward {reward!r} is neither a built-in name nor callable")
        fns.append(reward)
    weights = [1.0] * len(fns) if weights is None else [float(w) for w in weights]
    if len(weights) != len(fns) or not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights={weights!r} must be {len(fns)} finite numbers, one per reward")
    return fns, weights


def score_rewards(
    fns: Sequence[RewardFn],
    weights: Sequence[float],
    prompts: Sequence[str],
    completions: Sequence[str],
    references: Sequence[Any],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the rewards, ``[N]`` float32, and each function's own values by name.

    Raises:
        ValueError: Naming the function, when one returns a value that is not a list of ``N``
            finite real numbers (booleans count as 0 / 1).
    """
    n = len(completions)
    total = torch.zeros(n, dtype=torch.float32)
    parts: dict[str, torch.Tensor] = {}
    for fn, weight in zip(fns, weights, strict=True):
        name = _name(fn)
        values = fn(prompts, completions, references)
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != n:
            size = len(values) if isinstance(values, Sequence) else type(values).__name__
            raise ValueError(f"reward function {name} returned {size} values for {n} completions; it must return a "
                             "list of one number per completion")
        bad = [v for v in values if not isinstance(v, numbers.Real) or not math.isfinite(float(v))]
        if bad:
            raise ValueError(f"reward function {name} returned {bad[0]!r}; rewards must be finite real numbers")
        parts[name] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        total = total + weight * parts[name]
    return total, parts
