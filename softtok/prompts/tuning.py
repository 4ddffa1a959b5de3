"""Prompt tuning: ``n_virtual`` free input embeddings in front of the text.

Stored in fp32 and cast to the model's dtype at use (as PEFT does), so a bf16 model
trains an fp32 prompt.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softtok.generation.prefill import positions_from_mask
from softtok.prompts._arch import ModelInfo
from softtok.prompts.base import Injected, SoftPrompt, insert_after_padding
from softtok.prompts.config import PromptConfig, PromptTuningConfig
from softtok.soft.embedding import embedding_rms


def init_token_ids(config: PromptConfig, tokenizer: PreTrainedTokenizerBase | None, n: int) -> list[int]:
    """Token ids of ``config.init_text``, cut or repeated to ``n`` (PEFT's rule).

    The text is tokenised without special tokens, so no BOS lands inside the prompt.

    Raises:
        ValueError: No tokenizer, a text that tokenises to nothing, or a text longer than ``n``
            tokens without ``truncate_init_text``.
    """
    if tokenizer is None:
        raise ValueError(f"init='text' needs the tokenizer to encode init_text={config.init_text!r}")
    ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"init_text={config.init_text!r} encodes to no tokens")
    if len(ids) > n and not config.truncate_init_text:
        raise ValueError(
            f"init_text has {len(ids)} tokens but n_virtual={n}; shorten it, raise n_virtual, "
            "or set truncate_init_text=True to cut it"
        )
    reps = -(-n // len(ids))
    return (ids * reps)[:n]


def init_embeddings(
    config: PromptConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, n: int
) -> torch.Tensor:
    """Initial ``[n, D]`` fp32 prompt embeddings for ``config.init``.

    Random draws follow PEFT's order (a unit-normal ``[n, D]`` draw, then ``randint`` for
    ``sample_vocab``), so after the same ``torch.manual_seed`` ``sample_vocab`` picks the
    same tokens as PEFT's ``SAMPLE_VOCAB``. ``random`` differs from PEFT's ``RANDOM``
    on purpose: the unit normal is scaled to the embedding RMS, so the virtual tokens start
    at the scale of real ones instead of ~20x larger.
    """
    embedding = model.get_input_embeddings()
    device = embedding.weight.device
    weight = torch.empty(n, embedding.weight.shape[1], device=device).normal_()
    with torch.no_grad():
        if config.init == "random":
            return weight * embedding_rms(embedding)
        if config.init == "sample_vocab":
            ids = torch.randint(0, embedding.weight.shape[0], (n,), dtype=torch.long).to(device)
        else:
            ids = torch.tensor(init_token_ids(config, tokenizer, n), dtype=torch.long, device=device)
        return embedding(ids).detach().float().clone()


class PromptTuning(SoftPrompt):
    """Prompt tuning.

    Args:
        config: ``n_virtual`` and the initialisation.
        model: The base model (read for shapes and initial embeddings; not stored), or just
            its :class:`~softtok.prompts._arch.ModelInfo` when ``embeddings`` is given.
        tokenizer: Needed for ``init="text"``.
        embeddings: Use these ``[n_virtual, D]`` embeddings instead of initialising (import).

    Attributes:
        prompt_embeddings: ``[n_virtual, D]`` fp32 parameter (PEFT's ``prompt_embeddings``).

    Example:
        >>> prompt = PromptTuningConfig(n_virtual=20, init_text="Answer with a number.").build(model, tokenizer)
        >>> mark_only_prompt_trainable(model, prompt)
        >>> loss = prompt.loss(model, input_ids, attention_mask, labels)
    """

    def __init__(
        self,
        config: PromptTuningConfig,
        model: PreTrainedModel | ModelInfo,
        tokenizer: PreTrainedTokenizerBase | None = None,
        embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__(config, model)
        if embeddings is None:
            if isinstance(model, ModelInfo):
                raise ValueError("initialising a prompt needs the model itself, not only its ModelInfo")
            embeddings = init_embeddings(config, model, tokenizer, config.n_virtual)
        expected = (config.n_virtual, self.info.hidden_size)
        if tuple(embeddings.shape) != expected:
            raise ValueError(f"prompt embeddings of shape {tuple(embeddings.shape)} != [n_virtual, D] = {expected}")
        self.prompt_embeddings = nn.Parameter(embeddings.detach().float().clone())

    def inject(
        self,
        model: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> Injected:
        self._check(model, input_ids, attention_mask)
        embeds = model.get_input_embeddings()(input_ids)
        prompt = self.prompt_embeddings[None].expand(input_ids.shape[0], -1, -1)
        out, mask, labels, _, text_index, prompt_index = insert_after_padding(embeds, prompt, attention_mask, labels)
        return Injected(out, mask, positions_from_mask(mask), labels, None, text_index, prompt_index)
