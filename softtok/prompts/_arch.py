"""What a soft prompt needs to know about a Hugging Face causal LM, read once from the model.

Kept apart from the prompt modules so that every architecture quirk (GPT-2's ``n_head``,
GQA key/value heads, an explicit ``head_dim``) lives in one place.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass(frozen=True)
class ModelInfo:
    """Shapes of a causal LM that a soft prompt depends on.

    Attributes:
        hidden_size: Width of the input embeddings and hidden states (``D``).
        num_layers: Number of decoder layers (``L``).
        num_attention_heads: Query heads.
        num_kv_heads: Key/value heads (``< num_attention_heads`` under GQA).
        head_dim: Width of one attention head.
        vocab_size: Rows of the input embedding matrix.
        model_type: ``config.model_type`` (``"llama"``, ``"gpt2"``...).
        name_or_path: Where the model was loaded from (may be empty for models built in code).
    """

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    model_type: str
    name_or_path: str = ""

    @classmethod
    def from_model(cls, model: PreTrainedModel) -> ModelInfo:
        """Read the shapes from ``model.config`` (the text config of multimodal models)."""
        config = model.config
        if hasattr(config, "get_text_config"):
            config = config.get_text_config(decoder=True)

        def first(*names: str) -> int | None:
            for name in names:
                value = getattr(config, name, None)
                if value is not None:
                    return int(value)
            return None

        hidden = first("hidden_size", "n_embd", "d_model")
        layers = first("num_hidden_layers", "n_layer", "num_layers")
        heads = first("num_attention_heads", "n_head", "num_heads")
        if hidden is None or layers is None or heads is None:
            raise ValueError(
                f"cannot read hidden size / layers / heads from a {type(config).__name__}; "
                "softtok prompts support decoder-only HF causal LMs (llama, qwen2, gpt2, gemma...)"
            )
        if getattr(config, "num_kv_shared_layers", 0):
            raise ValueError(f"{config.model_type!r} shares KV across layers (num_kv_shared_layers); not supported")
        kv_heads = first("num_key_value_heads") or heads
        head_dim = first("head_dim") or hidden // heads
        vocab = model.get_input_embeddings().weight.shape[0]
        name = getattr(model, "name_or_path", "") or getattr(config, "_name_or_path", "") or ""
        return cls(hidden, layers, heads, kv_heads, head_dim, int(vocab), str(config.model_type), str(name))

    def to_dict(self) -> dict:
        """Plain-dict form (stored in checkpoints)."""
        return asdict(self)

    def check_compatible(self, other: ModelInfo, what: str = "this prompt") -> None:
        """Raise ``ValueError`` if ``other`` (a model) has different shapes from the ones ``what`` was built for."""
        for field in ("hidden_size", "num_layers", "num_kv_heads", "head_dim"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                raise ValueError(
                    f"{what} was built for {field}={mine} ({self.model_type} {self.name_or_path!r}) but the model "
                    f"has {field}={theirs} ({other.model_type} {other.name_or_path!r})"
                )


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder's list of layers (``model.model.layers``, ``model.transformer.h``...)."""
    num_layers = ModelInfo.from_model(model).num_layers
    base = model.base_model
    for name in ("layers", "h", "blocks", "layer"):
        layers = getattr(base, name, None)
        if isinstance(layers, nn.ModuleList) and len(layers) == num_layers:
            return layers
    for module in base.modules():  # any other layout: the first ModuleList with one entry per layer
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(f"cannot find the {num_layers} decoder layers of {type(model).__name__}")


def supports_logits_to_keep(model: PreTrainedModel) -> bool:
    """Whether ``model.forward`` accepts ``logits_to_keep`` (then logits are only computed where needed)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def kept_logits(forward: Callable[..., object], model: PreTrainedModel, keep: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[N, V]`` at the ``N`` positions where ``keep`` ``[B, T]`` is true (row-major order).

    ``forward(**kwargs)`` runs ``model`` on the batch. Where the model takes ``logits_to_keep``
    with a boolean mask, only the kept positions are projected onto the vocabulary (no ``[B, T, V]``
    tensor); otherwise the full logits are computed and selected.
    """
    if supports_logits_to_keep(model):
        return forward(logits_to_keep=keep).logits
    return forward().logits[keep]
