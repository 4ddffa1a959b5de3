"""A smaller copy of a causal LM that keeps a subset of its decoder layers.

POST's small models are distilled from the large one (DistilGPT2-style: initialise the
student from a subset of the teacher's layers, then distil on public text). This module does
the first half for any Hugging Face decoder: :func:`keep_layers` copies the model, keeps the
chosen layers (in order), renumbers them for the KV cache and updates the config, so the
result saves with ``save_pretrained`` and loads back with ``AutoModelForCausalLM``. The
distillation itself is :class:`softtok.modules.distil.LayerDistillationModule`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedModel

from softtok.prompts._arch import ModelInfo, decoder_layers

#: Config attributes that list one entry per layer (sliding/full attention patterns...).
PER_LAYER_CONFIG = ("layer_types",)


def every_other_layer(num_layers: int) -> list[int]:
    """Layers ``0, 2, 4, ...`` plus the last one (DistilBERT keeps every other layer; the last layer
    is kept too because it feeds the final norm and the output head)."""
    keep = list(range(0, num_layers, 2))
    if keep[-1] != num_layers - 1:
        keep.append(num_layers - 1)
    return keep


def resolve_keep(keep: str | Sequence[int], num_layers: int) -> list[int]:
    """The layer indices of ``keep`` (``"every_other"`` or a list), checked.

    Raises:
        ValueError: Unknown name, an empty list, an index outside ``[0, num_layers)``, a
            repeated or unsorted index.
    """
    if isinstance(keep, str):
        if keep != "every_other":
            raise ValueError(f"keep={keep!r} is not allowed; allowed: 'every_other' or a list of layer indices")
        return every_other_layer(num_layers)
    layers = list(keep)
    if not layers:
        raise ValueError("keep=[] would leave no decoder layer; keep at least one")
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_layers:
            raise ValueError(f"keep has {index!r}; layer indices must be integers in [0, {num_layers})")
    if layers != sorted(set(layers)):
        raise ValueError(f"keep={layers} must be strictly increasing (each layer once, in model order)")
    return layers


def keep_layers(model: PreTrainedModel, keep: str | Sequence[int] = "every_other") -> PreTrainedModel:
    """A deep copy of ``model`` with only the decoder layers ``keep``.

    Args:
        model: A Hugging Face decoder-only causal LM (left unchanged).
        keep: ``"every_other"`` (:func:`every_other_layer`) or the layer indices to keep.

    Returns:
        The smaller model: same embeddings, final norm and output head; kept layers renumbered
        ``0..k-1`` (their ``layer_idx``, used by the KV cache); ``config.num_hidden_layers`` and
        per-layer config lists updated.

    Raises:
        ValueError: Bad ``keep`` (see :func:`resolve_keep`), or a model whose layer list cannot be found.
    """
    num_layers = ModelInfo.from_model(model).num_layers
    layers = resolve_keep(keep, num_layers)
    small = copy.deepcopy(model)
    module_list = decoder_layers(small)
    kept = nn.ModuleList([module_list[i] for i in layers])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    parent = small.base_model
    for name, child in parent.named_children():
        if child is module_list:
            setattr(parent, name, kept)
            break
    else:  # pragma: no cover - decoder_layers found it under the base model, so this does not happen
        raise ValueError(f"cannot replace the decoder layers of {type(model).__name__}")
    config = small.config.get_text_config(decoder=True) if hasattr(small.config, "get_text_config") else small.config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, name, None) == num_layers:
            setattr(config, name, len(layers))
    for name in PER_LAYER_CONFIG:
        values = getattr(config, name, None)
        if isinstance(values, list) and len(values) == num_layers:
            setattr(config, name, [values[i] for i in layers])
    return small
