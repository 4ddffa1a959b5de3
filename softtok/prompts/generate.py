"""Greedy decoding through the prefill contract: the short answers of prompt-tuning evaluation.

For reasoning with Soft Thinking use :class:`softtok.generation.SoftThinkingGenerator`
with ``prefill=prompt``; this loop is the plain, fast path validation needs (no think
phase, one token per step, KV cache, rows drop out at EOS).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import PreTrainedModel

from softtok.generation.cache import check_rows_removable
from softtok.generation.prefill import PrefillBuilder, cache_argument, plain_prefill, prefill_logits


def eos_ids(model: PreTrainedModel, tokenizer=None) -> set[int]:  # noqa: ANN001
    """End-of-sequence ids: the model's generation config, else the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos if isinstance(eos, (list, tuple)) else [eos])


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prefill: PrefillBuilder = plain_prefill,
    max_new_tokens: int = 32,
    eos_token_ids: Iterable[int] = (),
) -> list[list[int]]:
    """Greedy continuation of left-padded prompts, with ``prefill`` placing any soft prompt.

    Args:
        model: Causal LM.
        input_ids: ``[B, T]`` left-padded prompt ids.
        attention_mask: ``[B, T]``.
        prefill: Prefill builder (a softtok prompt module, or :func:`plain_prefill`).
        max_new_tokens: Token budget per row, at least 1.
        eos_token_ids: Tokens that end a row (not included in the output).

    Returns:
        The generated ids of each row, EOS excluded.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be >= 1")
    eos = set(eos_token_ids)
    pre = prefill(model, input_ids, attention_mask)
    check_rows_removable(pre.cache, input_ids.shape[0])
    logits = prefill_logits(model, pre)
    cache, mask, positions = pre.cache, pre.attention_mask, pre.position_ids[:, -1] + 1
    embed = model.get_input_embeddings()
    results: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    active = list(range(input_ids.shape[0]))
    for step in range(max_new_tokens):
        tokens = logits.argmax(-1)
        keep = []
        for i, token in enumerate(tokens.tolist()):
            if token in eos:
                continue
            results[active[i]].append(token)
            keep.append(i)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):  # finished rows leave the batch (and the cache)
            index = torch.tensor(keep, device=tokens.device)
            cache.batch_select_indices(index)
            tokens, mask, positions = tokens[index], mask[index], positions[index]
            active = [active[i] for i in keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = model(
            inputs_embeds=embed(tokens)[:, None], attention_mask=mask, position_ids=positions[:, None],
            use_cache=True, **{cache_argument(model): cache},
        ).logits[:, -1]
        positions = positions + 1
    return results
