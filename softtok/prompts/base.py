"""The injection softtok owns: where virtual tokens go, and what the mask, labels and positions become.

Layout (the same for training, evaluation and generation). Each row of a batch may be
left-padded (generation) or right-padded (training); either way the virtual tokens are
placed right **after the row's leading padding**, immediately before its first real token::

    input      [pad pad | t0 t1 t2]                 mask [0 0 1 1 1]
    injected   [pad pad | v0 .. vP-1 | t0 t1 t2]    mask [0 0 1 .. 1 1 1 1]
    positions  [ 0   0  | 0 .. P-1   | P P+1 P+2]   labels [-100 .. -100 | labels]

so a padded row computes exactly what the unpadded row would: softtok prompts are
padding-invariant. (PEFT puts the virtual tokens in front of the padding and counts the
padding in the positions, so PEFT and softtok agree exactly on unpadded and right-padded
rows, and differ on left-padded ones.) Prefix tuning keeps its virtual tokens in the KV
cache instead: the mask gets a ones prefix and the text starts at position ``P``, as in PEFT.

A prompt module never owns the base model: it is passed in on every call, so the
module's ``state_dict`` holds prompt weights only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache, DynamicCache, PreTrainedModel

from softtok.generation.prefill import Prefill, cache_argument
from softtok.prompts._arch import ModelInfo, kept_logits
from softtok.prompts.config import PromptConfig

IGNORE_INDEX = -100


@dataclass
class Injected:
    """A batch with its virtual tokens in place, ready for one forward pass.

    Attributes:
        inputs_embeds: ``[B, T', D]`` input embeddings (``T' = T + P`` for embedding prompts, ``T`` for prefixes).
        attention_mask: ``[B, C + T']`` mask over cached prefix + inputs.
        position_ids: ``[B, T']``.
        labels: ``[B, T']`` with ``-100`` on virtual positions, or ``None``.
        cache: KV cache holding prefixes (prefix tuning), or ``None``.
        text_index: ``[B, T]`` where each original token sits in the injected sequence.
        prompt_index: ``[B, P]`` where the virtual tokens sit (``None`` for prefixes).
        instruction_mask: ``[B, T']`` instruction tokens (for instruction-aware prompts), or ``None``.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    cache: Cache | None
    text_index: torch.Tensor
    prompt_index: torch.Tensor | None = None
    instruction_mask: torch.Tensor | None = None


def leading_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """Number of leading zeros of each row of a ``[B, T]`` mask (``0`` for right-padded rows)."""
    return (attention_mask.long().cumsum(-1) == 0).sum(-1)


def insert_after_padding(
    embeds: torch.Tensor,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    instruction_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Place ``prompt`` ``[B, P, D]`` after each row's leading padding in ``embeds`` ``[B, T, D]``.

    One gather from ``cat([prompt, embeds])``: no Python loop over rows, differentiable in
    ``prompt``.

    Returns:
        ``(embeds', mask', labels', instruction_mask', text_index, prompt_index)`` in the
        injected layout (``labels'`` / ``instruction_mask'`` are ``None`` when not given).
    """
    batch, length = attention_mask.shape
    n_virtual = prompt.shape[1]
    lead = leading_padding(attention_mask)[:, None]  # [B, 1]
    j = torch.arange(length + n_virtual, device=attention_mask.device)[None]  # [1, T+P]
    # Index into cat([prompt, embeds]): padding keeps its slot, then the prompt, then the text.
    source = torch.where(j < lead, j + n_virtual, torch.where(j < lead + n_virtual, j - lead, j))
    width = embeds.shape[-1]
    out = torch.cat([prompt.to(embeds.dtype), embeds], dim=1).gather(1, source[..., None].expand(-1, -1, width))
    ones = attention_mask.new_ones(batch, n_virtual)
    mask = torch.cat([ones, attention_mask], dim=1).gather(1, source)
    new_labels = None
    if labels is not None:
        new_labels = torch.cat([labels.new_full((batch, n_virtual), IGNORE_INDEX), labels], dim=1).gather(1, source)
    new_instr = None
    if instruction_mask is not None:
        zeros = instruction_mask.new_zeros(batch, n_virtual)
        new_instr = torch.cat([zeros, instruction_mask], dim=1).gather(1, source)
    t = torch.arange(length, device=attention_mask.device)[None]
    text_index = torch.where(t < lead, t, t + n_virtual)
    prompt_index = lead + torch.arange(n_virtual, device=attention_mask.device)[None]
    return out, mask, new_labels, new_instr, text_index, prompt_index


class SoftPrompt(nn.Module):
    """Base class of softtok's soft prompts.

    Subclasses implement :meth:`inject`. Calling the module is the
    :class:`~softtok.generation.prefill.PrefillBuilder` contract, so a prompt plugs into
    the Soft Thinking generator: ``generator.generate(prompts, prefill=prompt)``.

    Args:
        config: The method's configuration.
        model: The base model the prompt is built for (read for shapes, not stored), or its
            :class:`~softtok.prompts._arch.ModelInfo` when the weights are given explicitly.
    """

    def __init__(self, config: PromptConfig, model: PreTrainedModel | ModelInfo) -> None:
        super().__init__()
        self.config = config
        self.info = model if isinstance(model, ModelInfo) else ModelInfo.from_model(model)

    @property
    def method(self) -> str:
        """The method name (``"prompt_tuning"``, ``"prefix_tuning"``, ``"iapt"``)."""
        return self.config.method

    @property
    def n_virtual(self) -> int:
        """Number of virtual tokens."""
        return self.config.n_virtual

    def num_parameters(self) -> int:
        """Trainable prompt parameters."""
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------- injection
    def inject(
        self,
        model: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> Injected:
        """Put the virtual tokens in place (see the module docstring for the layout).

        Args:
            model: The base model.
            input_ids: ``[B, T]`` token ids, left- or right-padded.
            attention_mask: ``[B, T]``.
            labels: ``[B, T]`` labels (``-100`` = ignored), or ``None``.
            instruction_mask: ``[B, T]`` tokens that count as the instruction (instruction-aware
                prompts only). Default: the unlabelled real tokens.
        """
        raise NotImplementedError

    def _check(self, model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.info.check_compatible(ModelInfo.from_model(model), f"this {self.method} prompt")
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                "must both be [B, T]"
            )

    def hooks(self, model: PreTrainedModel, injected: Injected):  # noqa: ANN201 - a context manager
        """Context in which the model runs on ``injected`` (instruction-aware prompts install layer hooks)."""
        return nullcontext()

    def model_forward(self, model: PreTrainedModel, injected: Injected, **kwargs):  # noqa: ANN201
        """Run ``model`` on an injected batch (inside :meth:`hooks`)."""
        with self.hooks(model, injected):
            return model(
                inputs_embeds=injected.inputs_embeds,
                attention_mask=injected.attention_mask,
                position_ids=injected.position_ids,
                use_cache=injected.cache is not None,
                **{cache_argument(model): injected.cache},
                **kwargs,
            )

    # ----------------------------------------------------------------- outputs
    def logits(
        self,
        model: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits at the original token positions, ``[B, T, V]`` (virtual positions dropped)."""
        injected = self.inject(model, input_ids, attention_mask, instruction_mask=instruction_mask)
        logits = self.model_forward(model, injected).logits
        return logits.gather(1, injected.text_index[..., None].expand(-1, -1, logits.shape[-1]))

    def loss(
        self,
        model: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over the labelled tokens (``labels != -100``).

        The same quantity as Hugging Face's causal-LM loss, but the vocabulary projection is
        only computed at labelled positions (``logits_to_keep`` with a boolean mask), which
        saves the ``[B, T, V]`` logits of the prompt and instruction: less time and memory.
        """
        injected = self.inject(model, input_ids, attention_mask, labels=labels, instruction_mask=instruction_mask)
        return causal_lm_loss(self, model, injected)

    # ------------------------------------------------------------- generation
    def forward(self, model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Prefill:
        """The prefill of a left-padded prompt batch (the ``PrefillBuilder`` contract)."""
        injected = self.inject(model, input_ids, attention_mask)
        cache = injected.cache if injected.cache is not None else DynamicCache(config=model.config)
        return Prefill(injected.inputs_embeds, injected.attention_mask, injected.position_ids, cache)


def causal_lm_loss(prompt: SoftPrompt, model: PreTrainedModel, injected: Injected) -> torch.Tensor:
    """Mean cross-entropy of ``injected.labels`` shifted by one, logits only where labelled."""
    labels = injected.labels
    if labels is None:
        raise ValueError("causal_lm_loss needs labels")
    targets = labels[:, 1:]
    logits = kept_logits(lambda **kw: prompt.model_forward(model, injected, **kw), model,
                         answer_positions(labels))  # [N, V]
    target = targets[targets != IGNORE_INDEX]
    if target.numel() == 0:  # nothing labelled: a zero that still has a graph (DDP needs one)
        return logits.sum() * 0.0 + sum(p.sum() for p in prompt.parameters()) * 0.0
    return F.cross_entropy(logits.float(), target)


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` boolean mask of the positions whose *next* token is labelled (``!= -100``): where a
    causal LM's logits predict the answer."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def default_instruction_mask(attention_mask: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The instruction = real tokens without a label (the prompt part of a training sequence)."""
    mask = attention_mask.bool()
    return mask & (labels == IGNORE_INDEX) if labels is not None else mask


# ------------------------------------------------------------------- helpers
def mark_only_prompt_trainable(model: nn.Module, prompt: nn.Module) -> None:
    """Freeze every base-model parameter and make every prompt parameter trainable."""
    model.requires_grad_(False)
    prompt.requires_grad_(True)


def prompt_state_dict(state_dict: dict[str, torch.Tensor], prefix: str = "prompt.") -> dict[str, torch.Tensor]:
    """Keep only the entries under ``prefix`` (the prompt's weights in a LightningModule's state dict)."""
    return {k: v for k, v in state_dict.items() if k.startswith(prefix)}


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Temporarily put ``module`` in eval mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
