"""Evaluation metrics for Soft Thinking runs: accuracy, pass@k, token counts, entropy, Cold Stop rate."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from softtok.generation.generator import END_REASONS
from softtok.metrics.passk import cat_state, first_occurrences, pass_at_k_table, validate_ks

__all__ = ["SoftThinkingMetrics", "THINK_ENDS"]

#: How the thinking phase of a sample ended, in code order (the model wrote the
#: end-of-thinking marker, Cold Stop fired (low entropy for long enough), the thinking
#: budget ran out, the model stopped (EOS) while still thinking, or SwiReasoning's switch
#: limit ended it): the generator's reasons.
THINK_ENDS: tuple[str, ...] = END_REASONS[1:]

_REQUIRED = ("problem", "correct", "think_tokens", "answer_tokens", "think_end")


class SoftThinkingMetrics(Metric):
    """Per-sample results of a Soft Thinking (or hard baseline) run, reduced to summary numbers.

    Each result is a dict with keys ``problem`` (int), ``correct`` (bool),
    ``think_tokens`` (int), ``answer_tokens`` (int), ``think_end`` (one of
    :data:`THINK_ENDS`), ``mean_entropy`` (float; ``None``/``NaN`` if not measured),
    ``latent_fraction`` and ``switch_count`` (SwiReasoning; absent or ``None`` otherwise) and,
    optionally, ``sample`` (int: the sample index within its problem; repeated
    ``(problem, sample)`` rows, such as ``DistributedSampler`` padding, then count once).

    States are concatenated across DDP ranks (``dist_reduce_fx="cat"``), so
    :meth:`compute` sees every sample of every rank.

    :meth:`compute` returns floats:

    * ``accuracy``: mean ``correct`` over samples (the pass@1 estimate when every problem
      has the same number of samples),
    * ``pass@k`` for each configured ``k`` (mean over problems; needs ``>= k`` samples each),
    * ``mean_think_tokens``, ``mean_answer_tokens``, ``mean_entropy`` (over the samples that
      have one; ``NaN`` if none has), and ``mean_latent_fraction``, ``mean_switch_count`` (over
      the SwiReasoning samples; only when there are some),
    * ``cold_stop_rate``, ``think_end_rate``, ``budget_rate``, ``eos_rate``,
      ``switch_limit_rate``: fraction of samples whose thinking ended that way,
    * ``num_samples``, ``num_problems``.

    With no samples every value is ``NaN`` (counts ``0``).

    Args:
        ks: pass@k budgets to report.
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, ks: Sequence[int] = (1,), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ks = validate_ks(ks)
        for name in ("problem", "sample", "correct", "think_end", "think_tokens", "answer_tokens", "entropy",
                     "latent_fraction", "switch_count"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Add a batch of per-sample result dicts (see the class docstring for the keys).

        Raises:
            ValueError: If a result lacks a required key or has an unknown ``think_end``.
        """
        if isinstance(results, Mapping):
            raise TypeError("update expects a list of result dicts, got a single dict; wrap it in a list")
        rows: dict[str, list] = {k: [] for k in ("problem", "sample", "correct", "think_end", "tt", "at", "ent",
                                                 "latent_fraction", "switch_count")}
        for i, result in enumerate(results):
            missing = [key for key in _REQUIRED if key not in result]
            if missing:
                raise ValueError(f"result {i} lacks key(s) {missing}; each result needs {list(_REQUIRED)}")
            end = result["think_end"]
            if end not in THINK_ENDS:
                raise ValueError(f"result {i}: think_end={end!r} is not one of {list(THINK_ENDS)}")
            sample = result.get("sample")
            entropy = result.get("mean_entropy")
            rows["problem"].append(int(result["problem"]))
            rows["sample"].append(-1 if sample is None else int(sample))
            rows["correct"].append(int(bool(result["correct"])))
            rows["think_end"].append(THINK_ENDS.index(end))
            rows["tt"].append(float(result["think_tokens"]))
            rows["at"].append(float(result["answer_tokens"]))
            rows["ent"].append(math.nan if entropy is None else float(entropy))
            for key in ("latent_fraction", "switch_count"):
                value = result.get(key)
                rows[key].append(math.nan if value is None else float(value))
        # An empty batch still appends (empty) tensors: under DDP every process must have a
        # tensor to gather, e.g. a process whose records were all filtered out of a greedy mode.
        dev = self.device
        self.problem.append(torch.tensor(rows["problem"], dtype=torch.long, device=dev))
        self.sample.append(torch.tensor(rows["sample"], dtype=torch.long, device=dev))
        self.correct.append(torch.tensor(rows["correct"], dtype=torch.long, device=dev))
        self.think_end.append(torch.tensor(rows["think_end"], dtype=torch.long, device=dev))
        self.think_tokens.append(torch.tensor(rows["tt"], dtype=torch.float32, device=dev))
        self.answer_tokens.append(torch.tensor(rows["at"], dtype=torch.float32, device=dev))
        self.entropy.append(torch.tensor(rows["ent"], dtype=torch.float32, device=dev))
        self.latent_fraction.append(torch.tensor(rows["latent_fraction"], dtype=torch.float32, device=dev))
        self.switch_count.append(torch.tensor(rows["switch_count"], dtype=torch.float32, device=dev))

    def compute(self) -> dict[str, float]:
        """Summary numbers over all samples seen (all ranks); see the class docstring."""
        dev = self.device
        problem = cat_state(self.problem, torch.long, dev)
        keep = first_occurrences(problem, cat_state(self.sample, torch.long, dev))
        problem = problem[keep]
        correct = cat_state(self.correct, torch.long, dev)[keep]
        think_end = cat_state(self.think_end, torch.long, dev)[keep]
        think_tokens = cat_state(self.think_tokens, torch.float32, dev)[keep]
        answer_tokens = cat_state(self.answer_tokens, torch.float32, dev)[keep]
        entropy = cat_state(self.entropy, torch.float32, dev)[keep]

        def mean(x: torch.Tensor) -> float:
            x = x[~torch.isnan(x)]
            return float(x.mean()) if x.numel() else math.nan

        out = {"accuracy": mean(correct.float())}
        out.update(pass_at_k_table(problem, correct, self.ks))
        out["mean_think_tokens"] = mean(think_tokens)
        out["mean_answer_tokens"] = mean(answer_tokens)
        out["mean_entropy"] = mean(entropy)
        for key in ("latent_fraction", "switch_count"):  # only for runs with SwiReasoning rows
            values = cat_state(getattr(self, key), torch.float32, dev)[keep]
            if not torch.isnan(values).all():
                out[f"mean_{key}"] = mean(values)
        for code, end in enumerate(THINK_ENDS):
            out[f"{end}_rate"] = mean((think_end == code).float()) if problem.numel() else math.nan
        out["num_samples"] = float(problem.numel())
        out["num_problems"] = float(torch.unique(problem).numel())
        return out
