"""One policy update from a batch of rollouts: rewards -> advantages -> clipped loss -> optimizer steps.

Plain PyTorch: :func:`policy_update` is the whole algorithm of a training step once the
rollouts exist (:func:`~softtok.rl.rollout.generate_rollouts`), so research code can drive
it directly and a LightningModule stays a thin wrapper around it.

The per-step log-probabilities of a rollout are its CoT steps (Gaussian log-densities, or
token log-probs for hard CoT) followed by its answer tokens, both weighted by what the
policy chose (:class:`~softtok.rl.rollout.RolloutBatch`). With ``inner_epochs > 1`` the
same rollouts are reused, and the ratio to the rollout policy's log-probs (computed once,
before the first step) is clipped: that is where GRPO's ``epsilon`` acts. RLOO ("Soft
Tokens, Hard Truths") is one epoch, no clipping, no KL, and the paper's normalisation
``-(1 / N) sum_i A_i sum_t log pi`` is ``loss_type="luspo"`` (each sequence's sum, then the mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from softtok.rl.losses import ADVANTAGES, SCALE_REWARDS, advantages, policy_loss
from softtok.rl.rollout import RolloutBatch, RolloutConfig


@dataclass(frozen=True)
class AlgorithmConfig:
    """The policy-gradient estimator and its loss.

    Attributes:
        estimator: ``rloo`` (the paper's default) or ``grpo``.
        scale_rewards: GRPO's reward scaling: ``group``, ``batch`` or ``none``.
        loss_type: ``grpo``, ``bnpo``, ``dr_grpo``, ``dapo`` or ``luspo`` (see :mod:`softtok.rl.losses`).
        epsilon_low: Clipping range below 1; ``None``: no clipping (RLOO).
        epsilon_high: Clipping range above 1; ``None``: ``epsilon_low``.
        inner_epochs: Optimizer steps over the same rollouts (1 for RLOO).
        max_grad_norm: Gradient clipping norm (``None``: off).
    """

    estimator: str = "rloo"
    scale_rewards: str = "group"
    loss_type: str = "luspo"
    epsilon_low: float | None = None
    epsilon_high: float | None = None
    inner_epochs: int = 1
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if self.estimator not in ADVANTAGES:
            raise ValueError(f"estimator={self.estimator!r} is unknown; allowed: {', '.join(ADVANTAGES)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards={self.scale_rewards!r} is unknown; allowed: {', '.join(SCALE_REWARDS)}")
        if int(self.inner_epochs) != self.inner_epochs or self.inner_epochs < 1:
            raise ValueError(f"inner_epochs={self.inner_epochs!r} must be an integer >= 1")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm!r} must be > 0 (or null: off)")
        # The loss settings are checked by policy_loss itself on a trivial batch.
        policy_loss(torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), loss_type=self.loss_type,
                    epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high, max_length=1)


def _sequence_log_probs(model: PreTrainedModel, batch: RolloutBatch, rollout: RolloutConfig
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, T + A]`` per-step log-probs (CoT then answer) and their weights."""
    out = batch.log_probs(model, rollout)
    logp = torch.cat([out.cot, out.answer], dim=1)
    weight = torch.cat([batch.cot_weight, batch.answer_weight], dim=1)
    return logp, weight


def policy_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    rewards: torch.Tensor,
    rollout: RolloutConfig,
    algorithm: AlgorithmConfig,
) -> dict[str, float]:
    """Update ``model`` on ``batch`` with ``rewards`` ``[N]``; returns what to log.

    Raises:
        ValueError: For rewards of the wrong length, or a group size the estimator cannot use.
    """
    if rewards.shape != (len(batch.results),):
        raise ValueError(f"rewards has shape {tuple(rewards.shape)}; expected ({len(batch.results)},), one per rollout")
    adv = advantages(rewards.float(), rollout.group_size, algorithm.estimator, algorithm.scale_rewards)
    adv = adv.to(batch.cot_mask.device)
    max_length = batch.cot_mask.shape[1] + batch.answer_mask.shape[1]
    old_logp = None
    if algorithm.inner_epochs > 1:
        with torch.no_grad():
            old_logp, _ = _sequence_log_probs(model, batch, rollout)
    stats: dict[str, float] = {}
    for _ in range(algorithm.inner_epochs):
        logp, weight = _sequence_log_probs(model, batch, rollout)
        out = policy_loss(logp, adv, weight, old_logp=old_logp, loss_type=algorithm.loss_type,
                          epsilon_low=algorithm.epsilon_low, epsilon_high=algorithm.epsilon_high,
                          max_length=max(max_length, 1))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, algorithm.max_grad_norm or float("inf"))
        optimizer.step()
        stats = {"loss": float(out.loss.detach()), "clip_fraction": float(out.clip_fraction), "grad_norm": float(norm)}
    stats.update(reward_mean=float(rewards.mean()), reward_std=float(rewards.std()) if rewards.numel() > 1 else 0.0,
                 cot_tokens=float(batch.cot_mask.sum(1).mean()), answer_tokens=float(batch.answer_weight.sum(1).mean()))
    return stats
