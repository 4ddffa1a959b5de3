"""The optimizer of the trainable modules: AdamW, linear warm-up, cosine decay to 0; and its checks.

Shared by :class:`~softtok.modules.continuous_cot.ContinuousCoTModule` and
:class:`~softtok.modules.sft.SFTModule` (``transformers.get_cosine_schedule_with_warmup``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import get_cosine_schedule_with_warmup


def check_optimizer_settings(lr: float, weight_decay: float, warmup_steps: int) -> None:
    """Raise, naming the value, unless ``lr > 0``, ``weight_decay >= 0`` (both finite) and ``warmup_steps`` >= 0."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr={lr!r} must be a finite number > 0")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay={weight_decay!r} must be a finite number >= 0")
    if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
        raise ValueError(f"warmup_steps={warmup_steps!r} must be an integer >= 0")


def adamw_cosine(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, warmup_steps: int,
                 total_steps: int, betas: tuple[float, float] = (0.9, 0.999)) -> dict[str, Any]:
    """AdamW and a per-step schedule: linear warm-up over ``warmup_steps``, then cosine to 0 at ``total_steps``.

    Returns:
        What ``configure_optimizers`` returns to Lightning.
    """
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if warmup_steps >= total_steps:
        rank_zero_info(f"warmup_steps={warmup_steps} >= the run's {total_steps} optimizer steps: no cosine decay")
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, 1))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
