"""Reinforcement learning of chains of thought (hard, soft or fuzzy): plain PyTorch, no Lightning."""

from softtok.rl.losses import (
    ADVANTAGES,
    LOSS_TYPES,
    SCALE_REWARDS,
    PolicyLoss,
    advantages,
    grpo_advantages,
    policy_loss,
    rloo_advantages,
)

__all__ = [
    "ADVANTAGES",
    "LOSS_TYPES",
    "SCALE_REWARDS",
    "PolicyLoss",
    "advantages",
    "grpo_advantages",
    "policy_loss",
    "rloo_advantages",
]
