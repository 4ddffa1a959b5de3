"""Reinforcement learning of chains of thought (hard, soft or fuzzy): plain PyTorch, no Lightning."""

from softtok.rl.logprob import GaussianDensity, RolloutLogProbs, StepDensity, cot_means, rollout_log_probs
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
from softtok.rl.rewards import (
    REWARDS,
    RewardFn,
    correctness_reward,
    format_reward,
    resolve_rewards,
    score_rewards,
    shaped_reward,
)
from softtok.rl.rollout import RL_MODES, RolloutBatch, RolloutConfig, generate_rollouts
from softtok.rl.update import AlgorithmConfig, policy_update

__all__ = [
    "ADVANTAGES",
    "AlgorithmConfig",
    "GaussianDensity",
    "LOSS_TYPES",
    "REWARDS",
    "RL_MODES",
    "RewardFn",
    "RolloutBatch",
    "RolloutConfig",
    "RolloutLogProbs",
    "StepDensity",
    "SCALE_REWARDS",
    "PolicyLoss",
    "advantages",
    "correctness_reward",
    "cot_means",
    "format_reward",
    "generate_rollouts",
    "grpo_advantages",
    "policy_loss",
    "policy_update",
    "resolve_rewards",
    "rloo_advantages",
    "rollout_log_probs",
    "score_rewards",
    "shaped_reward",
]
