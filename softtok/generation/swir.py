"""SwiReasoning: switch each row between latent and explicit thinking by the entropy trend.

SwiReasoning (Shi et al. 2025, "SwiReasoning: Switch-Thinking in Latent and Explicit for
Pareto-Superior Reasoning LLMs", arXiv 2510.05069, ICLR 2026; code ``sdc17/SwiReasoning``,
``generation_utils.py::generate_swir``) thinks in blocks. A *latent* step feeds the
untempered mixture ``e~_t = softmax(logits_t) @ E``; an *explicit* step feeds a token
sampled with the thinking filters. With ``H_t`` the entropy (nats) of the untempered
distribution and ``H_ref`` the entropy at the row's last switch (at its first step to begin
with), the rule at step ``t > 0`` is::

    latent   -> explicit   when H_t < H_ref                      (confidence rose: commit)
    explicit -> latent     when H_t > H_ref and the row has taken
                           at least window_size steps since its last switch
    on a switch:           H_ref <- H_t, the step counter restarts

At the switching step the input is blended with a thinking marker's embedding, with
coefficients annealed linearly to 1 over the thinking budget ``T``::

    alpha_t = alpha0 + (1 - alpha0) * t / T      entering latent:   alpha_t * e~_t + (1 - alpha_t) * E[think_start]
    beta_t  = beta0  + (1 - beta0)  * t / T      entering explicit: beta_t  * e~_t + (1 - beta_t)  * E[think_end]

(the reference blends the *latent* mixture ``e~_t`` also when entering explicit thinking,
and ``t / T`` there is the step over ``max_new_tokens``). Every latent-to-explicit switch
counts; the one numbered ``max_switch_count`` forces ``think_end`` and the answer instead
(the reference injects ``</think>`` at that switch, and after ``2 * max_switch_count``
switches ``</think>\\n\\nThe final answer is`` with a 32-token answer budget; softtok's
phase machine ends thinking at the first, and the answer budget is ``max_answer_tokens``).

Differences from the reference, by choice: its first step adds ``0.1 * E["\\n"]`` to the
latent input (not done here); it keeps math tokens (digits, letters, LaTeX commands)
explicit whatever the mode (not done: the latent/explicit decision is the entropy rule
alone); markers of several tokens (SmolLM2 has no ``<think>`` token) are embedded as the
mean of their tokens' embeddings, through the model's embedding module.
"""

from __future__ import annotations

import torch


def annealed(c0: float, step: torch.Tensor, total: int) -> torch.Tensor:
    """``c0 + (1 - c0) * step / total`` per row, float32 ``[B]`` (the reference's linear schedule)."""
    return c0 + (1.0 - c0) * step.to(torch.float32) / float(total)


class EntropySwitch:
    """SwiReasoning's per-row switching rule and input blend, on tensors (no host reads).

    The state lives in the generator's state dict under the keys of :meth:`initial_state`,
    so it follows the rows through compaction like every other per-row field.

    Args:
        window_size: Steps a row stays explicit before it may return to latent, >= 1.
        max_switch_count: The latent-to-explicit switch with this number ends thinking
            (``None``: no limit).
        start_latent: Rows start in latent (the reference) or explicit thinking.
        switching: ``False`` keeps every row in its starting mode.
        alpha0: Latent share of the input at a switch to latent, at step 0.
        beta0: Latent share of the input at a switch to explicit, at step 0.
        total_steps: ``T`` of the annealing schedule (the thinking budget).
    """

    def __init__(self, window_size: int, max_switch_count: int | None, start_latent: bool, switching: bool,
                 alpha0: float, beta0: float, total_steps: int) -> None:
        self.window_size = int(window_size)
        self.max_switch_count = max_switch_count
        self.start_latent = bool(start_latent)
        self.switching = bool(switching)
        self.alpha0, self.beta0, self.total_steps = float(alpha0), float(beta0), int(total_steps)

    def initial_state(self, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The per-row fields: mode (latent or not), reference entropy (NaN until the first
        step), steps since the last switch, and latent-to-explicit switches so far."""
        return {
            "swir_latent": torch.full((batch,), self.start_latent, dtype=torch.bool, device=device),
            "swir_ref": torch.full((batch,), float("nan"), dtype=torch.float32, device=device),
            "swir_stay": torch.full((batch,), -1, dtype=torch.long, device=device),
            "swir_switches": torch.zeros(batch, dtype=torch.long, device=device),
        }

    def update(self, s: dict[str, torch.Tensor], entropy: torch.Tensor, active: torch.Tensor
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply the switching rule to the ``active`` rows (``[B]`` bool) at this step.

        Args:
            s: The state (the fields of :meth:`initial_state`).
            entropy: ``[B]`` entropy (nats) of the untempered next-token distribution.
            active: Rows taking a thinking step now.

        Returns:
            The updated fields, and ``[B]`` bool masks: switched to latent, switched to
            explicit, and reached ``max_switch_count`` (this step's switch ends thinking).
        """
        entropy = entropy.to(torch.float32)
        latent, ref = s["swir_latent"], s["swir_ref"]
        stay = torch.where(active, s["swir_stay"] + 1, s["swir_stay"])  # 0 at a row's first step
        to_explicit = active & latent & (entropy < ref)  # NaN reference (first step): no switch
        to_latent = active & ~latent & (entropy > ref) & (stay >= self.window_size)
        if not self.switching:
            to_explicit = to_latent = torch.zeros_like(active)
        switched = to_explicit | to_latent
        switches = s["swir_switches"] + to_explicit.long()
        out = {
            "swir_latent": latent ^ switched,
            "swir_ref": torch.where(switched | (active & torch.isnan(ref)), entropy, ref),
            "swir_stay": torch.where(switched, 0, stay),
            "swir_switches": switches,
        }
        limit = torch.zeros_like(active) if self.max_switch_count is None else (
            to_explicit & (switches >= self.max_switch_count))
        return out, to_latent, to_explicit, limit

    def inputs(self, latent_now: torch.Tensor, to_latent: torch.Tensor, to_explicit: torch.Tensor,
               mixture: torch.Tensor, token: torch.Tensor, markers: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Each row's input ``[B, D]``: the latent mixture or the explicit token, blended at a switch.

        Args:
            latent_now: ``[B]`` rows in latent mode after this step's update.
            to_latent: ``[B]`` rows that switched to latent at this step.
            to_explicit: ``[B]`` rows that switched to explicit at this step.
            mixture: ``[B, D]`` the untempered mixture ``softmax(logits) @ E``.
            token: ``[B, D]`` the embedding of the sampled (explicit) token.
            markers: ``[2, D]`` the think-start and think-end marker embeddings.
            step: ``[B]`` the row's thinking step ``t`` (its annealing position).

        Returns:
            ``[B, D]`` in the dtype of ``token``; the blends are taken in float32.
        """
        wide = mixture.float()
        alpha = annealed(self.alpha0, step, self.total_steps)[:, None]
        beta = annealed(self.beta0, step, self.total_steps)[:, None]
        entering_latent = alpha * wide + (1.0 - alpha) * markers[0].float()
        entering_explicit = beta * wide + (1.0 - beta) * markers[1].float()
        latent = torch.where(to_latent[:, None], entering_latent, wide)
        explicit = torch.where(to_explicit[:, None], entering_explicit, token.float())
        return torch.where(latent_now[:, None], latent, explicit).to(token.dtype)
