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

Distributed training (one process per device, each with its own prompts) needs three
things from outside, all optional arguments of :func:`policy_update`: ``backward`` (e.g.
Lightning's ``manual_backward``, which averages gradients over processes), the global
batch's ``advantages`` when ``scale_rewards="batch"`` (the standard deviation of all
processes' rewards), and ``dapo``'s global count of steps ``num_items``.
:class:`~softtok.modules.ContinuousCoTModule` supplies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from softtok.rl.losses import ADVANTAGES, SCALE_REWARDS, policy_loss
from softtok.rl.losses import advantages as compute_advantages
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
        beta: Coefficient of the k3 KL penalty to a frozen reference policy (0: none, and no
            reference is kept; TRL's ``GRPOConfig`` default and the paper's).
        max_grad_norm: Gradient clipping norm (``None``: off).
    """

    estimator: str = "rloo"
    scale_rewards: str = "group"
    loss_type: str = "luspo"
    epsilon_low: float | None = None
    epsilon_high: float | None = None
    inner_epochs: int = 1
    beta: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if self.estimator not in ADVANTAGES:
            raise ValueError(f"estimator={self.estimator!r} is unknown; allowed: {', '.join(ADVANTAGES)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards={self.scale_rewards!r} is unknown; allowed: {', '.join(SCALE_REWARDS)}")
        if int(self.inner_epochs) != self.inner_epochs or self.inner_epochs < 1:
            raise ValueError(f"inner_epochs={self.inner_epochs!r} must be an integer >= 1")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta={self.beta!r} must be a finite number >= 0 (0: no KL penalty)")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm!r} must be > 0 (or null: off)")
        # The loss settings are checked by policy_loss itself on a trivial batch.
        policy_loss(torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), loss_type=self.loss_type,
                    epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high, max_length=1)


def sequence_log_probs(model: PreTrainedModel, batch: RolloutBatch, rollout: RolloutConfig, chunk_size: int = 64
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, T + A]`` per-step log-probs of ``batch`` under ``model`` (CoT then answer) and their weights.

    With gradients when enabled; the weights are 1 on the steps the policy chose.
    ``chunk_size``: CoT steps per chunk of the mean recompute.
    """
    out = batch.log_probs(model, rollout, chunk_size)
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
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ref_logp: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    num_items: float | None = None,
    backward: Callable[[torch.Tensor], None] | None = None,
    chunk_size: int = 64,
) -> dict[str, float]:
    """Update ``model`` on ``batch`` with ``rewards`` ``[N]``; returns what to log.

    Args:
        model: The policy (in the mode it generated in: dropout off, so that the first ratio is 1).
        optimizer: Its optimizer; stepped ``algorithm.inner_epochs`` times.
        batch: The rollouts.
        rewards: ``[N]`` their rewards.
        rollout: The settings the rollouts were made with.
        algorithm: The estimator and loss.
        scheduler: Stepped after every optimizer step.
        ref_logp: ``[N, T + A]`` the reference policy's :func:`sequence_log_probs`, required
            when ``algorithm.beta > 0``.
        advantages: ``[N]`` advantages to use instead of computing them from ``rewards``
            (distributed ``scale_rewards="batch"``: computed over all processes' rewards).
        num_items: ``dapo``'s normaliser (the global number of chosen steps divided by the
            number of processes that average their gradients); ``None``: this batch's count.
        backward: Called with the loss instead of ``loss.backward()`` (Lightning's ``manual_backward``).
        chunk_size: CoT steps per chunk of the log-prob recompute (memory ~ ``N x chunk x V``).

    Raises:
        ValueError: For rewards of the wrong length, a group size the estimator cannot use, or
            ``beta > 0`` without ``ref_logp``.
        FloatingPointError: If the loss or the gradient norm is not finite (the optimizer is not stepped).
    """
    if rewards.shape != (len(batch.results),):
        raise ValueError(f"rewards has shape {tuple(rewards.shape)}; expected ({len(batch.results)},), one per rollout")
    if algorithm.beta > 0 and ref_logp is None:
        raise ValueError(f"beta={algorithm.beta} needs ref_logp: the reference policy's sequence_log_probs")
    if advantages is None:
        advantages = compute_advantages(rewards.float(), rollout.group_size, algorithm.estimator,
                                        algorithm.scale_rewards)
    adv = advantages.to(batch.cot_mask.device)
    old_logp = None
    if algorithm.inner_epochs > 1:
        with torch.no_grad():
            old_logp, _ = sequence_log_probs(model, batch, rollout, chunk_size)
    stats: dict[str, float] = {}
    for epoch in range(algorithm.inner_epochs):
        logp, weight = sequence_log_probs(model, batch, rollout, chunk_size)
        out = policy_loss(logp, adv, weight, old_logp=old_logp, loss_type=algorithm.loss_type,
                          epsilon_low=algorithm.epsilon_low, epsilon_high=algorithm.epsilon_high,
                          ref_logp=ref_logp, beta=algorithm.beta, max_length=batch.max_length, num_items=num_items)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(
                f"the policy loss is {float(out.loss)} at inner epoch {epoch} (rewards mean {float(rewards.mean())}); "
                "the optimizer was not stepped. Check the learning rate and noise_factor, or use dtype float32")
        optimizer.zero_grad(set_to_none=True)
        (backward or torch.Tensor.backward)(out.loss)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, algorithm.max_grad_norm or float("inf"))
        if not torch.isfinite(norm):
            raise FloatingPointError(f"the gradient norm is {float(norm)} at inner epoch {epoch}; the optimizer was "
                                     "not stepped. Check the learning rate and noise_factor, or use dtype float32")
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        stats = {"loss": float(out.loss.detach()), "clip_fraction": float(out.clip_fraction), "grad_norm": float(norm)}
        if out.kl is not None:
            stats["kl"] = float(out.kl)
    stats.update(reward_mean=float(rewards.mean()), reward_std=float(rewards.std()) if rewards.numel() > 1 else 0.0,
                 cot_tokens=float(batch.cot_mask.sum(1).mean()), answer_tokens=float(batch.answer_weight.sum(1).mean()))
    return stats
