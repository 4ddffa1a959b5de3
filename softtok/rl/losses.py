"""Policy-gradient estimators for RL on (soft or hard) chains of thought: advantages and the clipped loss.

Rollouts come in groups: ``G`` completions of the same prompt in consecutive rows. Each
row gets a scalar reward; an *advantage* compares it with its group:

* **RLOO** (REINFORCE leave-one-out; Kool et al. 2019, Ahmadian et al. 2024, the default of
  "Soft Tokens, Hard Truths"): ``A_i = r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean_g r)``;
* **GRPO** (Shao et al. 2024, DeepSeekMath): ``A_i = (r_i - mean_g r) / (std + 1e-4)`` with the
  standard deviation (Bessel-corrected) of the group (``scale_rewards="group"``), of the whole
  batch (``"batch"``, Dr. GRPO's advice against the group scaling bias) or no scaling
  (``"none"``); TRL's ``GRPOTrainer`` computes the same.

The loss is PPO's clipped surrogate per step ``t`` (a token, or a continuous CoT step whose
log-probability is a Gaussian log-density), with ``rho = exp(logp - logp_old)``::

    L_t = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)  [+ beta * KL_t]
    KL_t = exp(d) - d - 1,  d = clamp(ref - logp, -20, 20)      (Schulman's k3 estimator; clamp: verl)

On the first pass over fresh rollouts ``rho = 1`` and the gradient is ``-A grad logp``:
RLOO is this loss with no clipping and ``beta = 0``. The per-step losses are aggregated as
TRL names it (:data:`LOSS_TYPES`):

* ``grpo``: each sequence's mean over its steps, then the mean over sequences;
* ``bnpo``: the mean over all steps of the batch;
* ``dr_grpo``: the sum over all steps divided by ``N * max_length`` (Dr. GRPO, Liu et al. 2025);
* ``dapo``: the sum over all steps divided by the number of steps in the *global* batch
  (``num_items``: summed over processes and accumulation steps; Yu et al. 2025), which
  makes the gradient that of one large batch under DDP and gradient accumulation;
* ``luspo``: each sequence's sum over its steps, then the mean over sequences: the
  normalisation of "Soft Tokens, Hard Truths"'s RLOO, ``-(1/BG) sum A (sum of log-probs)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: How the advantages are computed.
ADVANTAGES = ("rloo", "grpo")
#: GRPO's reward scaling.
SCALE_REWARDS = ("group", "batch", "none")
#: Loss aggregations (TRL's names).
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
#: Added to the standard deviation before dividing (TRL's value).
STD_EPS = 1e-4
#: The k3 KL's log-ratio ``ref - logp`` is clamped to ``[-20, 20]`` (verl's ``low_var_kl``).
KL_LOG_RATIO_CLAMP = 20.0


def _check_groups(rewards: torch.Tensor, group_size: int) -> None:
    if int(group_size) != group_size or group_size < 2:
        raise ValueError(f"group_size={group_size!r} must be an integer >= 2: a group-relative advantage compares "
                         "each completion with the others of its prompt")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be a 1-D tensor whose length is a multiple of group_size={group_size} "
                         f"(consecutive rows of one prompt); got shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"rewards must be finite; got {rewards.tolist()}")


def _pairwise_centred(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N / G, G]``: ``sum_j (r_i - r_j)`` within each group, in at least float32.

    Summing differences (instead of subtracting a mean) is exactly 0 for equal rewards, so
    a group whose completions all scored the same gives exactly no gradient.
    """
    grouped = rewards.to(torch.promote_types(rewards.dtype, torch.float32)).view(-1, group_size)
    return (grouped[:, :, None] - grouped[:, None, :]).sum(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out advantages ``r_i - mean_{j != i} r_j`` within consecutive groups of ``group_size``.

    Args:
        rewards: ``[N]`` rewards, ``N`` a multiple of ``group_size``.
        group_size: Completions per prompt ``G >= 2``.

    Returns:
        ``[N]`` advantages (float32 at least); all-equal rewards in a group give zeros.

    Raises:
        ValueError: For ``group_size < 2``, a length that is not a multiple of it, or non-finite rewards.
    """
    _check_groups(rewards, group_size)
    return (_pairwise_centred(rewards, group_size) / (group_size - 1)).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """Group-normalised advantages ``(r_i - mean_g r) / (std + 1e-4)`` (TRL's ``GRPOTrainer``).

    Args:
        rewards: ``[N]`` rewards, ``N`` a multiple of ``group_size``.
        group_size: Completions per prompt ``G >= 2``.
        scale_rewards: ``group`` (the group's standard deviation), ``batch`` (the whole batch's)
            or ``none`` (centred only). Standard deviations are Bessel-corrected.

    Returns:
        ``[N]`` advantages.

    Raises:
        ValueError: As :func:`rloo_advantages`, and for an unknown ``scale_rewards``.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards!r} is unknown; allowed: {', '.join(SCALE_REWARDS)}")
    _check_groups(rewards, group_size)
    centred = _pairwise_centred(rewards, group_size) / group_size  # r_i - mean of its group
    if scale_rewards == "group":
        centred = centred / ((centred.pow(2).sum(-1, keepdim=True) / (group_size - 1)).sqrt() + STD_EPS)
    elif scale_rewards == "batch":
        wide = rewards.to(centred.dtype)
        centred = centred / ((wide - wide.mean()).pow(2).sum().div(wide.numel() - 1).sqrt() + STD_EPS)
    return centred.reshape(-1)


def advantages(rewards: torch.Tensor, group_size: int, estimator: str = "rloo", scale_rewards: str = "group"
               ) -> torch.Tensor:
    """:func:`rloo_advantages` or :func:`grpo_advantages` by name (``estimator`` in :data:`ADVANTAGES`)."""
    if estimator == "rloo":
        return rloo_advantages(rewards, group_size)
    if estimator == "grpo":
        return grpo_advantages(rewards, group_size, scale_rewards)
    raise ValueError(f"estimator={estimator!r} is unknown; allowed: {', '.join(ADVANTAGES)}")


@dataclass(frozen=True)
class PolicyLoss:
    """The aggregated loss and what to log about it.

    Attributes:
        loss: Scalar loss to minimise.
        clip_fraction: Fraction of the masked steps whose ratio was clipped (0 without clipping).
        kl: Mean k3 KL to the reference over the masked steps (``None`` without a reference).
    """

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    kl: torch.Tensor | None


def policy_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logp: torch.Tensor | None = None,
    loss_type: str = "grpo",
    epsilon_low: float | None = 0.2,
    epsilon_high: float | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    max_length: int | None = None,
    num_items: float | torch.Tensor | None = None,
) -> PolicyLoss:
    """The clipped policy-gradient loss over per-step log-probabilities, aggregated by ``loss_type``.

    Args:
        logp: ``[N, T]`` log-probabilities (nats) of the taken steps under the current policy,
            with gradients: token log-probs, or CoT-step Gaussian log-densities.
        advantages: ``[N]`` per-sequence advantages (or ``[N, T]`` per step).
        mask: ``[N, T]`` 1 for the steps that count (padding and finished rows 0).
        old_logp: ``[N, T]`` log-probs of the policy that made the rollouts (``None``: ``logp``
            detached, i.e. the first pass over fresh rollouts, where the ratio is 1).
        loss_type: ``grpo``, ``bnpo``, ``dr_grpo``, ``dapo`` or ``luspo`` (see the module docstring).
        epsilon_low: Lower clipping range (``ratio >= 1 - epsilon_low``); ``None`` disables
            clipping (RLOO, "Soft Tokens, Hard Truths").
        epsilon_high: Upper clipping range; ``None``: ``epsilon_low`` (DAPO's clip-higher uses
            a larger one, e.g. 0.28).
        ref_logp: ``[N, T]`` log-probs under a frozen reference, for the k3 KL penalty.
        beta: KL coefficient (0: no penalty, no reference needed).
        max_length: ``dr_grpo``'s constant length (the completion budget); required there.
        num_items: ``dapo``'s normaliser, the number of masked steps in the global batch (all
            processes and accumulation steps); ``None``: this batch's.

    Returns:
        A :class:`PolicyLoss`.

    Raises:
        ValueError: For an unknown ``loss_type``, mismatched shapes, negative ranges, ``beta > 0``
            without ``ref_logp``, or ``dr_grpo`` without ``max_length``.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is unknown; allowed: {', '.join(LOSS_TYPES)}")
    if logp.dim() != 2 or mask.shape != logp.shape:
        raise ValueError(f"logp and mask must both be [N, T]; got {tuple(logp.shape)} and {tuple(mask.shape)}")
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise ValueError(f"advantages must be [N] or [N, T] for logp {tuple(logp.shape)}; "
                         f"got {tuple(advantages.shape)}")
    for name, other in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if other is not None and other.shape != logp.shape:
            raise ValueError(f"{name} must have logp's shape {tuple(logp.shape)}; got {tuple(other.shape)}")
    if epsilon_low is None and epsilon_high is not None:
        raise ValueError(f"epsilon_high={epsilon_high!r} needs epsilon_low (clipping is on only when epsilon_low is "
                         "set; DAPO's clip-higher is epsilon_low 0.2, epsilon_high 0.28)")
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    for name, value in (("epsilon_low", epsilon_low), ("epsilon_high", epsilon_high)):
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name}={value!r} must be a finite number >= 0 (or null: no clipping)")
    if beta < 0 or (beta > 0 and ref_logp is None):
        raise ValueError(f"beta={beta!r} must be >= 0, and beta > 0 needs ref_logp (the reference model's log-probs)")
    if loss_type == "dr_grpo" and (max_length is None or max_length < 1):
        raise ValueError(f"loss_type='dr_grpo' divides by N * max_length: max_length={max_length!r} must be >= 1")

    mask = mask.to(logp.dtype)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]
    adv = adv.to(logp.dtype)
    ratio = torch.exp(logp - (logp.detach() if old_logp is None else old_logp))
    per_step = ratio * adv
    clipped = torch.zeros_like(ratio, dtype=torch.bool)
    if epsilon_low is not None:
        bounded = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
        per_step = torch.min(per_step, bounded * adv)
        clipped = (bounded != ratio).detach()
    per_step = -per_step
    kl = None
    if ref_logp is not None:
        # Clamped as verl's low_var_kl does: a Gaussian CoT step's log-ratio grows as 1 / sigma^2
        # and exp() would overflow to inf (then NaN gradients) long before the policy is useless.
        delta = (ref_logp - logp).clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
        kl_per_step = torch.exp(delta) - delta - 1.0
        if beta > 0:
            per_step = per_step + beta * kl_per_step
        kl = (kl_per_step.detach() * mask).sum() / mask.sum().clamp(min=1.0)

    total = (per_step * mask).sum()
    if loss_type == "grpo":
        loss = ((per_step * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = total / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = total / (logp.shape[0] * max_length)
    elif loss_type == "luspo":
        loss = (per_step * mask).sum(-1).mean()
    else:  # dapo
        items = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=logp.dtype)
        loss = total / items.clamp(min=1.0)
    clip_fraction = (clipped.to(logp.dtype) * mask).sum() / mask.sum().clamp(min=1.0)
    return PolicyLoss(loss, clip_fraction.detach(), kl)
