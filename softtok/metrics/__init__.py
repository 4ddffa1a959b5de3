"""torchmetrics for reasoning evaluation: pass@k and Soft Thinking summary numbers; Wilson intervals.

All metrics keep per-sample rows in ``dist_reduce_fx="cat"`` states, so they sync
across DDP ranks. For single running means (e.g. a reward) use
:class:`torchmetrics.MeanMetric` directly.
"""

from softtok.metrics.intervals import wilson_interval
from softtok.metrics.passk import PassAtK, pass_at_k
from softtok.metrics.soft_thinking import THINK_ENDS, SoftThinkingMetrics

__all__ = ["pass_at_k", "PassAtK", "SoftThinkingMetrics", "THINK_ENDS", "wilson_interval"]
