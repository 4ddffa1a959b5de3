"""Policy log-probabilities of a chain-of-thought rollout, by one teacher-forced forward pass.

A soft or fuzzy rollout feeds, at CoT step ``t``, the noisy input ``h~_t = h_t + sigma * eps``
where ``h_t = softmax(logits_{t-1} / tau) @ E`` is the mean the policy computed from the
previous position ("Soft Tokens, Hard Truths", methods.md section 4). Its log-density
under the policy is Gaussian,

    log pi(h~_t | h~_<t) = -||h~_t - h_t||^2 / (2 sigma^2)      (the constant dropped),

and its gradient flows through ``h_t``, i.e. through the logits at position ``t - 1``.
So the log-probabilities of a whole rollout come from ONE forward pass over the stored
inputs (prompt, ``h~_1 .. h~_T``, answer tokens), with gradients, not from replaying the
decode loop: the means are recomputed from that pass's logits and compared with the
inputs that were fed. Answer tokens (and the CoT tokens of a hard rollout) get ordinary
token log-probs.

The mean is a function shared with the rollout (:func:`cot_means`): the full-vocabulary
softmax by default, or a top-``k`` mixture. It is taken in chunks over ``T`` so that the
``[N, T, V] x [V, D]`` product of a 512-step CoT on a 50k vocabulary fits in memory.

The density is a small interface (:class:`StepDensity`): :class:`GaussianDensity` now,
others (Gumbel, Dirichlet) later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedModel

from softtok.generation.prefill import positions_from_mask
from softtok.prompts._arch import supports_logits_to_keep
from softtok.soft.embedding import embedding_rms, mixture_mean
from softtok.soft.filters import working_dtype


class StepDensity(Protocol):
    """The log-density of the fed CoT inputs given the policy's means."""

    def log_prob(self, inputs: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """``[N, T]`` log-densities (nats) of ``inputs`` ``[N, T, D]`` around ``means`` ``[N, T, D]``."""
        ...


@dataclass(frozen=True)
class GaussianDensity:
    """Isotropic Gaussian exploration noise ``N(h_t, sigma^2 I)``.

    Attributes:
        sigma: Noise standard deviation (embedding units), > 0: ``noise_factor`` times the
            embedding RMS (:meth:`from_embedding`).
        per_dimension: Divide the log-density by ``D`` (a per-coordinate scale that does not
            grow with the hidden size); off by default, as in the paper.
    """

    sigma: float
    per_dimension: bool = False

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma={self.sigma!r} must be > 0: soft and fuzzy rollouts need exploration noise "
                             "(noise_factor > 0)")

    @classmethod
    def from_embedding(cls, embedding: nn.Module, noise_factor: float = 0.33, per_dimension: bool = False
                       ) -> GaussianDensity:
        """``sigma = noise_factor * RMS(E)`` through the embedding module (scaled embeddings included)."""
        if not noise_factor > 0:
            raise ValueError(f"noise_factor={noise_factor!r} must be > 0 for soft and fuzzy rollouts")
        return cls(noise_factor * embedding_rms(embedding), per_dimension)

    def log_prob(self, inputs: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        dtype = working_dtype(torch.promote_types(inputs.dtype, means.dtype))
        squared = (inputs.to(dtype) - means.to(dtype)).pow(2).sum(-1)
        logp = -squared / (2.0 * self.sigma**2)
        return logp / inputs.shape[-1] if self.per_dimension else logp


def cot_means(logits: torch.Tensor, embedding: nn.Module, temperature: float, top_k: int = 0,
              chunk_size: int = 64) -> torch.Tensor:
    """The mean CoT inputs for ``[N, T, V]`` logits: ``[N, T, D]``, :func:`~softtok.soft.mixture_mean`
    (the function the rollout fed) taken in chunks of ``chunk_size`` steps.

    Args:
        logits: Next-token logits at the positions before each CoT step.
        embedding: The model's input embedding module (its scale is applied).
        temperature: ``tau`` (0.5 soft, 1e-4 fuzzy, in the paper), > 0.
        top_k: Keep the ``k`` largest probabilities, renormalised; 0: the full vocabulary (the paper).
        chunk_size: Steps per chunk of the ``[N, chunk, V] x [V, D]`` product.

    Raises:
        ValueError: For ``temperature <= 0`` or ``top_k < 0``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    if top_k < 0:
        raise ValueError(f"top_k={top_k!r} must be >= 0 (0: the full vocabulary)")
    chunks = [mixture_mean(logits[:, start:start + chunk_size], embedding, temperature, top_k)
              for start in range(0, logits.shape[1], chunk_size)]
    return torch.cat(chunks, dim=1)


def _token_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[ids]`` in at least float32: ``[N, L, V]``, ``[N, L]`` -> ``[N, L]``."""
    logp = torch.log_softmax(logits.to(working_dtype(logits.dtype)), dim=-1)
    return logp.gather(-1, ids[..., None])[..., 0]


@dataclass(frozen=True)
class RolloutLogProbs:
    """Log-probabilities of a batch of rollouts.

    Attributes:
        cot: ``[N, T]`` per CoT step (Gaussian log-densities, or token log-probs in hard mode),
            0 where ``cot_weight`` (default ``cot_mask``) is 0.
        answer: ``[N, A]`` answer-token log-probs, 0 where ``answer_mask`` is 0.
        means: ``[N, T, D]`` the recomputed CoT means (soft/fuzzy; ``None`` in hard mode).
        answer_logits: ``[N, A, V]`` the logits that predicted each answer token.
    """

    cot: torch.Tensor
    answer: torch.Tensor
    means: torch.Tensor | None
    answer_logits: torch.Tensor


def rollout_log_probs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    cot_mask: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    *,
    cot_inputs: torch.Tensor | None = None,
    cot_ids: torch.Tensor | None = None,
    density: StepDensity | None = None,
    cot_weight: torch.Tensor | None = None,
    answer_weight: torch.Tensor | None = None,
    temperature: float,
    answer_temperature: float = 1.0,
    top_k: int = 0,
    chunk_size: int = 64,
) -> RolloutLogProbs:
    """One teacher-forced forward over (prompt, CoT, answer): the rollout's log-probabilities.

    The sequence of each row is its left-padded prompt, its ``T_i`` CoT inputs (right-padded
    to ``T``) and its answer tokens (right-padded to ``A``). Padding slots are masked out of
    attention and skipped by the positions, so a row's numbers do not depend on the others.

    Args:
        model: The policy (a causal LM; gradients flow when enabled).
        prompt_ids: ``[N, P]`` left-padded prompt ids; ``prompt_mask`` ``[N, P]``.
        cot_mask: ``[N, T]`` 1 for the CoT steps of each row (a prefix of each row).
        answer_ids: ``[N, A]`` answer tokens; ``answer_mask`` ``[N, A]`` (a prefix of each row).
        cot_inputs: ``[N, T, D]`` the noisy inputs fed (soft / fuzzy rollouts).
        cot_ids: ``[N, T]`` the sampled CoT tokens (hard rollouts; give this or ``cot_inputs``).
        density: The CoT step density (soft / fuzzy), e.g. :class:`GaussianDensity`.
        cot_weight: ``[N, T]`` which CoT steps count in ``cot`` (default ``cot_mask``): 0 for a
            step fed but not drawn from the policy (a soft CoT's think_end token).
        answer_weight: ``[N, A]`` which answer-segment tokens count in ``answer`` (default
            ``answer_mask``): 0 for tokens that are fed but not chosen by the policy, such as
            the ``think_end`` tokens forced after the CoT.
        temperature: ``tau`` of the CoT means (soft / fuzzy), or of the sampled CoT tokens (hard);
            no default, as both depend on it.
        answer_temperature: The temperature the answer tokens were sampled at.
        top_k: The means' top-``k`` filter (0: full vocabulary).
        chunk_size: CoT steps per chunk of the mean computation.

    Returns:
        A :class:`RolloutLogProbs`.

    Raises:
        ValueError: Unless exactly one of ``cot_inputs`` / ``cot_ids`` is given (with ``density``
            for ``cot_inputs``), or for mismatched shapes.
    """
    if (cot_inputs is None) == (cot_ids is None):
        raise ValueError("give exactly one of cot_inputs (soft / fuzzy rollouts) and cot_ids (hard rollouts)")
    if cot_inputs is not None and density is None:
        raise ValueError("cot_inputs needs a density (e.g. GaussianDensity.from_embedding(...))")
    n, p = prompt_ids.shape
    t, a = cot_mask.shape[1], answer_ids.shape[1]
    if cot_mask.shape[0] != n or answer_ids.shape != answer_mask.shape or answer_ids.shape[0] != n:
        raise ValueError(f"rows disagree: prompt {tuple(prompt_ids.shape)}, cot_mask {tuple(cot_mask.shape)}, "
                         f"answer {tuple(answer_ids.shape)} / {tuple(answer_mask.shape)}")
    embedding = model.get_input_embeddings()
    cot_embeds = embedding(cot_ids) if cot_ids is not None else cot_inputs
    if cot_embeds.shape[:2] != (n, t):
        raise ValueError(f"CoT inputs {tuple(cot_embeds.shape)} do not match cot_mask {tuple(cot_mask.shape)}")
    embeds = torch.cat([embedding(prompt_ids), cot_embeds.to(embedding.weight.dtype), embedding(answer_ids)], dim=1)
    mask = torch.cat([prompt_mask, cot_mask, answer_mask], dim=1).long()
    # Only the logits from the prompt's last position on are needed: with ``logits_to_keep`` the
    # model computes no others (as TRL does), else they are computed and cut off.
    keep = t + a + 1
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes it on
    extra = {"logits_to_keep": keep} if supports_logits_to_keep(base) else {}
    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask),
                   use_cache=False, **extra).logits[:, -keep:]  # column j: position p - 1 + j

    # The logits that predict CoT step j sit at the last real position before it: the prompt's
    # last position for j = 0, else CoT step j - 1 (the CoT is a prefix of its slots).
    cot_pred = logits[:, :t]
    # The answer's first token follows the row's last CoT step (or the prompt for T_i = 0).
    steps = torch.arange(a, device=logits.device)[None]
    last_cot = cot_mask.long().sum(-1, keepdim=True)  # [N, 1] the column before answer token 0
    answer_pos = torch.where(steps == 0, last_cot, t + steps)
    answer_logits = logits.gather(1, answer_pos[..., None].expand(-1, -1, logits.shape[-1]))
    answer_logp = _token_log_probs(answer_logits / answer_temperature, answer_ids)
    answer_logp = answer_logp * (answer_mask if answer_weight is None else answer_weight)

    weight = cot_mask if cot_weight is None else cot_weight
    if cot_ids is not None:
        cot_logp = _token_log_probs(cot_pred / temperature, cot_ids)
        return RolloutLogProbs(cot_logp * weight, answer_logp, None, answer_logits)
    means = cot_means(cot_pred, embedding, temperature, top_k, chunk_size)
    cot_logp = density.log_prob(cot_inputs, means) * weight
    return RolloutLogProbs(cot_logp, answer_logp, means, answer_logits)
