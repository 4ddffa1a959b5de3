"""Replace each row's context span by its concept embeddings: the inference path and the student's input.

A batch holds the **full-context** sequences (the context tokens already in place) and a
``context_mask`` marking each row's context span. Splicing swaps every span for that row's
concept embeddings and re-pads::

    input      [pad pad | u0 u1 | c0 c1 c2 c3 c4 c5 | q0 q1]      context_mask [0 0 0 0 1 1 1 1 1 1 0 0]
    spliced    [pad pad pad pad pad | u0 u1 | e0 e1 e2 | q0 q1]    (ratio 2: 6 tokens -> 3 CEs)
    positions  [ 0   0   0   0   0  |  0  1 |  2  3  4 |  5  6]

so one batch serves the full-context baseline (plain prefill), the compressed context
(:class:`CompressedContext`) and truncated baselines (drop part of the span). Positions come
from the new mask (:func:`~softtok.generation.prefill.positions_from_mask`): the text after
the context moves up by ``n_context - K`` positions, as in CompLLM, where the LLM reads the
concept embeddings as ordinary inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache, PreTrainedModel

from softtok.compression.compressor import compressed_length, max_positions, split_segments
from softtok.generation.prefill import Prefill, positions_from_mask
from softtok.prompts.base import IGNORE_INDEX

if TYPE_CHECKING:
    from softtok.compression.cache import SegmentCache
    from softtok.compression.compressor import SegmentCompressor

PADDINGS = ("left", "right")


@dataclass
class Spliced:
    """A batch with its context spans replaced by concept embeddings.

    Attributes:
        inputs_embeds: ``[B, T', D]`` (``T'`` = the longest row after compression).
        attention_mask: ``[B, T']``.
        position_ids: ``[B, T']`` (0 on each row's first real token).
        labels: ``[B, T']`` with ``-100`` on concept embeddings and padding, or ``None``.
        lengths: Real positions of each row after compression.
        n_concepts: Concept embeddings of each row.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    lengths: list[int]
    n_concepts: list[int]


def context_spans(context_mask: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` of each row's context span (``start == end`` for a row without context).

    Raises:
        ValueError: Shapes differ, a row's context is not one contiguous span, or it covers padding.
    """
    if context_mask.ndim != 2 or context_mask.shape != attention_mask.shape:
        raise ValueError(f"context_mask {tuple(context_mask.shape)} must be [B, T] like attention_mask "
                         f"{tuple(attention_mask.shape)}")
    ctx = context_mask.bool().cpu()
    real = attention_mask.bool().cpu()
    spans = []
    for i in range(ctx.shape[0]):
        where = ctx[i].nonzero().flatten()
        if where.numel() == 0:
            spans.append((0, 0))
            continue
        start, end = int(where[0]), int(where[-1]) + 1
        if where.numel() != end - start:
            raise ValueError(f"context_mask row {i} is not one contiguous span: {where.numel()} context tokens "
                             f"spread over positions {start}..{end - 1}")
        if not bool(real[i, start:end].all()):
            raise ValueError(f"context_mask row {i} marks padding (attention_mask 0) as context")
        spans.append((start, end))
    return spans


def _real_range(mask_row: torch.Tensor, i: int) -> tuple[int, int]:
    where = mask_row.nonzero().flatten()
    if where.numel() == 0:
        raise ValueError(f"row {i} has no real token (attention_mask all 0)")
    start, end = int(where[0]), int(where[-1]) + 1
    if where.numel() != end - start:
        raise ValueError(f"attention_mask row {i} has holes; rows must be left- or right-padded")
    return start, end


def check_fits(model: PreTrainedModel, compressor: SegmentCompressor, attention_mask: torch.Tensor,
               spans: list[tuple[int, int]], extra: int = 0) -> list[int]:
    """Compressed row lengths; raise before any model work if one exceeds the model's position limit.

    Args:
        model: The base model (its ``max_position_embeddings`` / ``n_positions``).
        compressor: Gives the segment length and ratio.
        attention_mask: ``[B, T]`` of the full-context batch.
        spans: Each row's context span.
        extra: Positions needed after the prompt (e.g. the generation budget); 0 by default.

    Raises:
        ValueError: A row would need more positions than the model has (the numbers named).
    """
    limit = max_positions(model)
    lengths = []
    for i, (start, end) in enumerate(spans):
        real = int(attention_mask[i].sum())
        k = compressed_length(end - start, compressor.config)
        new = real - (end - start) + k
        if limit is not None and new + extra > limit:
            raise ValueError(f"row {i}: {end - start} context tokens compress to {k} concept embeddings, which with "
                             f"the other {real - (end - start)} prompt tokens{f' and {extra} more' if extra else ''} "
                             f"make {new + extra} positions > max_position_embeddings={limit} of this "
                             f"{model.config.model_type} model; shorten the context or raise the ratio")
        lengths.append(new)
    return lengths


def splice_context(
    model: PreTrainedModel,
    compressor: SegmentCompressor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    cache: SegmentCache | None = None,
    padding: str = "left",
) -> Spliced:
    """Replace each row's context span by its concept embeddings (see the module docstring).

    Every row's context is split into segments from the span's start; all segments of the
    batch are encoded together (and independently). Differentiable in the compressor's
    parameters when no ``cache`` is given.

    Args:
        model: The base model the compressor was built on.
        compressor: The segment compressor.
        input_ids: ``[B, T]`` full-context ids, left- or right-padded.
        attention_mask: ``[B, T]``.
        context_mask: ``[B, T]``, one contiguous span of real tokens per row (or none).
        labels: ``[B, T]`` labels to carry along (``-100`` on the context), or ``None``.
        cache: Segment cache (inference only).
        padding: ``"left"`` (generation) or ``"right"`` (training) padding of the result.

    Raises:
        ValueError: Bad shapes, a non-contiguous span, or a row longer than the model's
            position limit after compression (all before any model work).
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r} is not allowed; allowed: {', '.join(PADDINGS)}")
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                         "must both be [B, T]")
    if labels is not None and labels.shape != input_ids.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
    spans = context_spans(context_mask, attention_mask)
    mask_cpu = attention_mask.bool().cpu()
    reals = [_real_range(mask_cpu[i], i) for i in range(len(spans))]
    lengths = check_fits(model, compressor, attention_mask, spans)
    ids_cpu = input_ids.cpu()
    segments, owner = [], []
    for i, (start, end) in enumerate(spans):
        for seg in split_segments(ids_cpu[i, start:end].tolist(), compressor.config.segment_len):
            segments.append(seg)
            owner.append(i)
    encoded = compressor.encode_segments(model, segments, cache=cache) if segments else []
    embeds = model.get_input_embeddings()(input_ids)  # [B, T, D]
    width = max(lengths)
    batch, dim = input_ids.shape[0], embeds.shape[-1]
    mask = attention_mask.new_zeros(batch, width)
    new_labels = labels.new_full((batch, width), IGNORE_INDEX) if labels is not None else None
    rows, n_concepts = [], []
    for i, ((start, end), (lo, hi)) in enumerate(zip(spans, reals, strict=True)):
        ces = [e for e, o in zip(encoded, owner, strict=True) if o == i]
        ce = torch.cat(ces, 0).to(embeds.dtype) if ces else embeds.new_zeros(0, dim)
        if start == end:
            start = end = lo
        row = torch.cat([embeds[i, lo:start], ce, embeds[i, end:hi]], 0)
        n = row.shape[0]
        offset = width - n if padding == "left" else 0
        rows.append((offset, row))
        mask[i, offset:offset + n] = 1
        if new_labels is not None:
            lab = torch.cat([labels[i, lo:start], labels.new_full((ce.shape[0],), IGNORE_INDEX), labels[i, end:hi]])
            new_labels[i, offset:offset + n] = lab
        n_concepts.append(ce.shape[0])
    # Pad and stack the rows (differentiable: the graph reaches the concept embeddings).
    out = torch.stack([torch.cat([row.new_zeros(off, dim), row, row.new_zeros(width - off - row.shape[0], dim)])
                       for off, row in rows])
    return Spliced(out, mask, positions_from_mask(mask), new_labels, lengths, n_concepts)


class CompressedContext:
    """The :class:`~softtok.generation.prefill.PrefillBuilder` of a compressed context.

    Bound to the ``context_mask`` of one left-padded full-context prompt batch: called by the
    generator with that batch's ``input_ids`` / ``attention_mask``, it compresses each row's
    context span, splices the concept embeddings in, re-left-pads, and returns a
    :class:`~softtok.generation.prefill.Prefill` with a fresh ``DynamicCache``. Works with
    :func:`softtok.prompts.generate.greedy_generate` and the Soft Thinking generator.

    Args:
        compressor: The segment compressor.
        context_mask: ``[B, T]`` context tokens of each row (one contiguous span per row).
        cache: Optional :class:`~softtok.compression.cache.SegmentCache`.
    """

    def __init__(self, compressor: SegmentCompressor, context_mask: torch.Tensor,
                 cache: SegmentCache | None = None) -> None:
        self.compressor = compressor
        self.context_mask = context_mask
        self.cache = cache
        self.last: Spliced | None = None

    def __call__(self, model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Prefill:
        if self.context_mask.shape != input_ids.shape:
            raise ValueError(f"context_mask {tuple(self.context_mask.shape)} was built for another batch than "
                             f"input_ids {tuple(input_ids.shape)}")
        spliced = splice_context(model, self.compressor, input_ids, attention_mask,
                                 self.context_mask.to(input_ids.device), cache=self.cache, padding="left")
        self.last = spliced
        return Prefill(spliced.inputs_embeds, spliced.attention_mask, spliced.position_ids,
                       DynamicCache(config=model.config))


def truncate_context(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context_mask: torch.Tensor,
    keep: list[int],
    side: str = "end",
    pad_token_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The truncation baseline: keep ``keep[i]`` context tokens of row ``i`` (its end or its start), re-left-pad.

    Args:
        input_ids: ``[B, T]`` left-padded full-context prompts.
        attention_mask: ``[B, T]``.
        context_mask: ``[B, T]``, one contiguous span per row.
        keep: Context tokens to keep per row (at most the span's length).
        side: ``"end"`` keeps the last tokens (nearest the question), ``"start"`` the first.
        pad_token_id: Id written into the padding.

    Returns:
        ``(input_ids, attention_mask, context_mask)`` of the truncated, left-padded batch.

    Raises:
        ValueError: Unknown ``side``, ``keep`` of the wrong length or out of range.
    """
    if side not in ("end", "start"):
        raise ValueError(f"side={side!r} is not allowed; allowed: end, start")
    spans = context_spans(context_mask, attention_mask)
    if len(keep) != len(spans):
        raise ValueError(f"keep has {len(keep)} entries for {len(spans)} rows")
    rows, ctx_rows = [], []
    for i, ((start, end), k) in enumerate(zip(spans, keep, strict=True)):
        if not 0 <= k <= end - start:
            raise ValueError(f"keep[{i}]={k} must be in 0..{end - start} (the row's context tokens)")
        real = attention_mask[i].bool()
        cut_lo, cut_hi = (start, end - k) if side == "end" else (start + k, end)
        drop = torch.zeros_like(real)
        drop[cut_lo:cut_hi] = True
        rows.append(input_ids[i][real & ~drop])
        ctx_rows.append(context_mask[i][real & ~drop])
    width = max(r.shape[0] for r in rows)
    ids = input_ids.new_full((len(rows), width), pad_token_id)
    mask = attention_mask.new_zeros(len(rows), width)
    ctx = context_mask.new_zeros(len(rows), width)
    for i, (row, crow) in enumerate(zip(rows, ctx_rows, strict=True)):
        ids[i, width - row.shape[0]:] = row
        mask[i, width - row.shape[0]:] = 1
        ctx[i, width - row.shape[0]:] = crow
    return ids, mask, ctx
