"""The prefill contract between the generator and anything that prepends soft tokens.

The generator builds a :class:`Prefill` for the prompt batch, runs it once with the
KV cache, then decodes one token per step. A soft prompt implements
:class:`PrefillBuilder` to place its virtual tokens (as embeddings, or as KV prefixes
in the cache) without the generator knowing which kind it is.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import Cache, DynamicCache, PreTrainedModel


@dataclass
class Prefill:
    """Everything the first forward pass needs.

    Attributes:
        inputs_embeds: ``[B, T, D]`` input embeddings (left-padded rows).
        attention_mask: ``[B, L]`` mask over cache + inputs (``L = T`` + cached prefix length).
        position_ids: ``[B, T]`` positions of the inputs.
        cache: The KV cache to extend (may already hold prefix keys/values).
        logits: ``[B, V]`` next-token logits when the builder has already run the prompt
            through the model (then ``cache`` holds the whole prompt and ``inputs_embeds`` is
            not fed again); ``None`` when the first forward is left to the decoder.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    cache: Cache
    logits: torch.Tensor | None = None


@functools.cache
def _cache_argument_of(model_type: type) -> str:
    parameters = inspect.signature(model_type.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(model: PreTrainedModel) -> str:
    """The keyword that hands a KV cache to ``model.forward``.

    transformers renamed ``past_key_values`` to ``cache`` during the 5.x series (5.24 takes
    ``cache`` and warns on the old name, to be removed in 5.40; 5.17 takes only
    ``past_key_values`` and silently drops an unknown ``cache`` into ``**kwargs``, so the cache
    would stay empty). A peft wrapper is read through its base model.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_argument_of(type(base))


def prefill_logits(model: PreTrainedModel, prefill: Prefill) -> torch.Tensor:
    """Run the first forward of ``prefill`` (unless its builder already did): next-token logits ``[B, V]``.

    Afterwards ``prefill.cache`` holds the whole prompt; decoding continues at position
    ``prefill.position_ids[:, -1] + 1`` with ``prefill.attention_mask``.
    """
    if prefill.logits is not None:
        return prefill.logits
    out = model(
        inputs_embeds=prefill.inputs_embeds, attention_mask=prefill.attention_mask,
        position_ids=prefill.position_ids, use_cache=True, logits_to_keep=1, **{cache_argument(model): prefill.cache},
    )
    return out.logits[:, -1]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class PrefillBuilder(Protocol):
    """Builds the :class:`Prefill` for a batch of left-padded prompts."""

    def __call__(self, model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Prefill: ...


def plain_prefill(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Prefill:
    """The prefill of a model with no soft prompt."""
    embeds = model.get_input_embeddings()(input_ids)
    return Prefill(embeds, attention_mask, positions_from_mask(attention_mask), DynamicCache(config=model.config))
