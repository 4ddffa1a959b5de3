"""CompLLM's training signal: distil the full-context answer distribution into the compressed-context one.

Teacher: the frozen LLM reads the full context (LoRA off, no grad). Student: the same LLM
reads the compressed context (concept embeddings from the compressor, with a graph through
the head and the LoRA) followed by the rest of the sequence. Both are scored at the answer
tokens (``labels != -100``), and the loss is :func:`softtok.distill.kl_distillation` at
temperature 1, ``mean_n KL(p_teacher,n || p_student,n)`` in nats per answer token (CompLLM,
Berton et al. 2025, arXiv 2509.19228: distillation on the answer tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from softtok.compression.compressor import SegmentCompressor
from softtok.compression.prefill import IGNORE_INDEX, splice_context
from softtok.distill import kl_distillation
from softtok.prompts._arch import kept_logits
from softtok.prompts.base import answer_positions


def distillation_loss(compressor: SegmentCompressor, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
    """KL of the full-context teacher to the compressed-context student on the answer tokens.

    Args:
        compressor: The segment compressor (trainable).
        model: Its base model (frozen).
        batch: ``input_ids`` / ``attention_mask`` / ``labels`` ``[B, T]`` of full-context
            training sequences (right-padded) and ``context_mask`` ``[B, T]`` marking each
            row's context span.

    Returns:
        Scalar loss in nats per answer token (0 when the compressor is the identity).

    Raises:
        ValueError: Missing keys, no answer token in the batch, or the errors of
            :func:`~softtok.compression.prefill.splice_context`.
    """
    missing = [k for k in ("input_ids", "attention_mask", "labels", "context_mask") if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; it needs input_ids, attention_mask, labels and context_mask")
    labels = batch["labels"]
    if not bool((labels != IGNORE_INDEX).any()):
        raise ValueError("the batch has no answer token (every label is -100)")
    spliced = splice_context(model, compressor, batch["input_ids"], batch["attention_mask"], batch["context_mask"],
                             labels=labels, padding="right")
    with torch.no_grad():
        teacher = kept_logits(lambda **kw: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                                 **kw), model, answer_positions(labels))
    student = kept_logits(lambda **kw: model(inputs_embeds=spliced.inputs_embeds,
                                             attention_mask=spliced.attention_mask,
                                             position_ids=spliced.position_ids, **kw),
                          model, answer_positions(spliced.labels))
    return kl_distillation(student, teacher.detach(), temperature=1.0)
