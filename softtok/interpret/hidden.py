"""Hidden states at chosen layers, for token ids or for input *embeddings* (soft tokens).

Layer ``l`` is ``hidden_states[l]`` of a Hugging Face forward with
``output_hidden_states=True``: ``0`` is the input embeddings, ``l`` the output of block
``l``, and ``L`` (the number of blocks) the last block's output after the final norm, as
Hugging Face returns it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from softtok.interpret.vocab import check_width


def num_layers(model: PreTrainedModel) -> int:
    """Decoder blocks of ``model`` (its text config's ``num_hidden_layers`` / ``n_layer``)."""
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise ValueError(f"cannot read the number of layers from a {type(config).__name__}")


def default_layers(n_layers: int) -> list[int]:
    """LatentLens's grid: ``[1, 2, 4, 8, 16, 24, n-2, n-1]``, the ones below ``n`` (sorted, unique)."""
    base = [layer for layer in (1, 2, 4, 8, 16, 24) if layer < n_layers]
    return sorted({*base, *(layer for layer in (n_layers - 2, n_layers - 1) if layer >= 0)})


def check_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """``layers`` sorted; raise ``ValueError`` naming any value outside ``[0, n_layers]``, a repeat or none."""
    layers = list(layers)
    if not layers:
        raise ValueError(f"layers={layers} is empty; give layer numbers in [0, {n_layers}]")
    bad = [layer for layer in layers if isinstance(layer, bool) or not isinstance(layer, int)
           or not 0 <= layer <= n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {n_layers} layers, so a layer is in "
                         f"[0, {n_layers}] (0 = input embeddings, {n_layers} = last block after the final norm)")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers={layers} repeats a layer")
    return sorted(layers)


def _decoder(model: PreTrainedModel) -> torch.nn.Module:
    """The model without its LM head (``base_model``), so no ``[T, V]`` logits are computed."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, torch.nn.Module) else model


def forward_hidden(model: PreTrainedModel, layers: Sequence[int], input_ids: torch.Tensor | None = None,
                   inputs_embeds: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """One forward; returns ``[len(layers), B, T, D]`` float32 hidden states (layers already checked)."""
    out = _decoder(model)(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                          output_hidden_states=True, use_cache=False)
    return torch.stack([out.hidden_states[layer] for layer in layers]).float()


@torch.no_grad()
def hidden_states(
    model: PreTrainedModel,
    embeds: torch.Tensor,
    layers: Sequence[int],
    prefix_ids: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Hidden states of a sequence of input embeddings, at ``layers``: ``[len(layers), N, D]`` float32.

    The sequence fed is the embedded ``prefix_ids`` (through the model's input embedding
    module, so with any embedding scale) followed by the ``N`` rows of ``embeds`` as
    ``inputs_embeds``; the states returned are those at the ``N`` soft positions. A soft
    prompt's rows, a concept-token trace after its chat prompt, or one concept token after
    some text can be read this way.

    Args:
        model: A Hugging Face causal LM.
        embeds: ``[N, D]`` input embeddings, in the space the model is fed.
        layers: Layer numbers in ``[0, L]`` (see the module docstring).
        prefix_ids: Token ids put in front (e.g. a chat prompt), or ``None``.

    Raises:
        ValueError: Before the forward, for a width other than the model's or a layer out of range.
    """
    embedding = model.get_input_embeddings()
    embeds = check_width(embeds, embedding.weight.shape[1])
    layers = check_layers(layers, num_layers(model))
    device = embedding.weight.device
    soft = embeds.detach().to(device=device, dtype=embedding.weight.dtype)
    parts = []
    if prefix_ids is not None and len(prefix_ids):
        ids = torch.as_tensor(prefix_ids, dtype=torch.long, device=device).reshape(-1)
        parts.append(embedding(ids))
    parts.append(soft)
    inputs = torch.cat(parts)[None]
    states = forward_hidden(model, layers, inputs_embeds=inputs, attention_mask=torch.ones(
        inputs.shape[:2], dtype=torch.long, device=device))
    return states[:, 0, inputs.shape[1] - soft.shape[0]:]
