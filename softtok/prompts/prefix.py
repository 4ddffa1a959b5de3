"""Prefix tuning: trainable keys and values prepended in every attention layer.

The prefixes live in the KV cache, never in the input sequence: a fresh
:class:`~transformers.DynamicCache` holds ``P`` prefix entries per layer before the
prefill, the attention mask gets a ones prefix and the text starts at position ``P``
(as PEFT does, so PEFT prefix adapters import with identical logits). Prefix keys are
stored as the attention layer caches them: after the key projection, key norm and
rotary embedding, so ``init="text"`` (the model's own cache of ``init_text``) makes the
untrained prefix exactly that text as a hard prompt.

Gradient checkpointing: transformers' checkpointed decoder layers drop the KV cache in
training (a recompute would write it twice), which would drop the prefixes but not their
mask columns. Under checkpointing, :meth:`PrefixTuning.model_forward` therefore passes the
prefixes as a :class:`PrefixCache`, a read-only cache (its ``update`` returns prefix + new
states without storing them), and lets the layers keep it for that call, since the
recompute reads the same prefixes. Loss and gradients equal those without checkpointing.

Sliding-window layers evict their oldest entries, prefix included, once a sequence
outgrows the window: prefix tuning assumes full-attention layers (or short sequences).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn
from transformers import Cache, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_layers import GradientCheckpointingLayer

from softtok.generation.prefill import cache_argument, positions_from_mask
from softtok.prompts._arch import ModelInfo, decoder_layers
from softtok.prompts.base import Injected, SoftPrompt, eval_mode
from softtok.prompts.config import PrefixTuningConfig
from softtok.prompts.tuning import init_embeddings, init_token_ids


@torch.no_grad()
def model_kv(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    """The keys and values ``model`` caches for one sequence ``ids`` ``[P]``: ``[L, 2, H_kv, P, hd]`` fp32."""
    cache = DynamicCache(config=model.config)
    with eval_mode(model):
        model(input_ids=ids[None], use_cache=True, logits_to_keep=1, **{cache_argument(model): cache})
    return torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]).float()


class PrefixCache(Cache):
    """A read-only view of a cache holding prefixes: ``update`` returns the stored + new states, stores nothing.

    One forward pass sees exactly what a :class:`~transformers.DynamicCache` would give it
    (same states, same mask sizes), and a second pass over the same inputs (a gradient
    checkpointing recompute) sees the same prefixes again.

    Args:
        cache: The cache whose layers hold the prefixes (shared, never modified).
    """

    def __init__(self, cache: Cache) -> None:
        super().__init__(layers=cache.layers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


def gradient_checkpointing_active(model: PreTrainedModel) -> bool:
    """Whether ``model`` runs (some) modules checkpointed now: enabled, training, gradients on."""
    if not (model.training and torch.is_grad_enabled()):
        return False
    return any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules())


@contextmanager
def cache_kept_under_checkpointing(model: PreTrainedModel) -> Iterator[None]:
    """Let ``model``'s checkpointed decoder layers keep a read-only cache for the calls made inside.

    Each decoder layer must be a transformers ``GradientCheckpointingLayer`` (checkpointed
    itself, every layer or every n-th); it is told that the cache may stay
    (``_can_checkpoint_with_cache``). Modules above the layers that drop the cache
    themselves under checkpointing (GPT-2's ``GPT2Model``) have their
    ``gradient_checkpointing`` flag lowered for the call: the layers still checkpoint.

    Raises:
        ValueError: If a decoder layer does not checkpoint itself, before any forward pass.
    """
    layers = list(decoder_layers(model))
    if not all(isinstance(layer, GradientCheckpointingLayer) for layer in layers):
        raise ValueError(
            f"prefix tuning under gradient checkpointing needs decoder layers that checkpoint themselves "
            f"(transformers' GradientCheckpointingLayer); {type(model).__name__}'s {type(layers[0]).__name__} does "
            "not. Call model.gradient_checkpointing_disable(), or use prompt tuning or IAPT, which need no cache"
        )
    gates = [m for m in model.modules()
             if not isinstance(m, GradientCheckpointingLayer) and getattr(m, "gradient_checkpointing", False) is True]
    for layer in layers:
        layer._can_checkpoint_with_cache = True  # an instance attribute over transformers' class default
    for module in gates:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for layer in layers:
            vars(layer).pop("_can_checkpoint_with_cache", None)
        for module in gates:
            module.gradient_checkpointing = True


class PrefixTuning(SoftPrompt):
    """Prefix tuning, with or without the MLP reparameterisation.

    Args:
        config: ``n_virtual``, initialisation and ``projection_hidden``.
        model: The base model (read for shapes and initial keys/values; not stored), or just
            its :class:`~softtok.prompts._arch.ModelInfo` when ``prefix`` is given.
        tokenizer: Needed for ``init="text"``.
        prefix: Use these ``[L, 2, H_kv, P, hd]`` prefixes instead of initialising (import, folding).

    Attributes:
        prefix: ``[L, 2, H_kv, P, hd]`` fp32 keys (index 0) and values (index 1) of every
            layer, when ``projection_hidden == 0``.
        embedding, mlp: The reparameterisation, when ``projection_hidden > 0``.
    """

    def __init__(
        self,
        config: PrefixTuningConfig,
        model: PreTrainedModel | ModelInfo,
        tokenizer: PreTrainedTokenizerBase | None = None,
        prefix: torch.Tensor | None = None,
    ) -> None:
        super().__init__(config, model)
        info, n = self.info, config.n_virtual
        self.shape = (info.num_layers, 2, info.num_kv_heads, n, info.head_dim)
        if prefix is not None:
            if config.projection_hidden:
                raise ValueError("explicit prefixes need projection_hidden=0 (the MLP cannot be inverted)")
            if tuple(prefix.shape) != self.shape:
                raise ValueError(
                    f"prefix shape {tuple(prefix.shape)} != expected [L, 2, H_kv, P, hd] = {self.shape}"
                )
            self.prefix = nn.Parameter(prefix.detach().float().clone())
            return
        shapes_only = isinstance(model, ModelInfo)  # loading a checkpoint: zeros, then load_state_dict
        device = None if shapes_only else model.get_input_embeddings().weight.device
        if config.projection_hidden:
            if shapes_only:
                self.embedding = nn.Parameter(torch.zeros(n, info.hidden_size))
            else:
                self.embedding = nn.Parameter(init_embeddings(config, model, tokenizer, n))
            out = info.num_layers * 2 * info.num_kv_heads * info.head_dim
            self.mlp = nn.Sequential(
                nn.Linear(info.hidden_size, config.projection_hidden),
                nn.Tanh(),
                nn.Linear(config.projection_hidden, out),
            )
            if device is not None:
                self.mlp.to(device)
            return
        if shapes_only:
            raise ValueError("initialising a prefix needs the model itself, not only its ModelInfo (or pass prefix=)")
        self.prefix = nn.Parameter(self._init_prefix(config, model, tokenizer).to(device))

    def _init_prefix(
        self, config: PrefixTuningConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None
    ) -> torch.Tensor:
        n = config.n_virtual
        device = model.get_input_embeddings().weight.device
        if config.init == "text":
            return model_kv(model, torch.tensor(init_token_ids(config, tokenizer, n), device=device))
        sampled = model_kv(model, torch.randint(0, self.info.vocab_size, (n,), dtype=torch.long).to(device))
        if config.init == "sample_vocab":
            return sampled
        # "random": Gaussian with the per-layer, per-K/V scale of real cached keys and values.
        scale = sampled.pow(2).mean(dim=(2, 3, 4), keepdim=True).sqrt()
        return torch.randn_like(sampled) * scale

    @property
    def projected(self) -> bool:
        """Whether the prefixes come from the MLP reparameterisation."""
        return self.config.projection_hidden > 0

    def prefix_kv(self) -> torch.Tensor:
        """The ``[L, 2, H_kv, P, hd]`` fp32 prefixes (through the MLP when reparameterised)."""
        if not self.projected:
            return self.prefix
        flat = self.mlp(self.embedding)  # [P, L*2*H*hd], PEFT's flat layout
        n, (layers, _, heads, _, head_dim) = self.n_virtual, self.shape
        return flat.view(n, layers, 2, heads, head_dim).permute(1, 2, 3, 0, 4)

    def folded(self) -> PrefixTuning:
        """An equivalent prompt without the MLP (for export and inference): the prefixes as parameters."""
        args = {k: v for k, v in self.config.to_dict().items() if k != "method"}
        config = PrefixTuningConfig(**{**args, "projection_hidden": 0})
        with torch.no_grad():
            return PrefixTuning(config, self.info, prefix=self.prefix_kv().detach())

    def build_cache(self, model: PreTrainedModel, batch: int, dtype: torch.dtype) -> DynamicCache:
        """A fresh cache holding the prefixes of every layer for ``batch`` rows."""
        kv = self.prefix_kv().to(dtype)
        cache = DynamicCache(config=model.config)
        for layer in range(kv.shape[0]):
            keys = kv[layer, 0][None].expand(batch, -1, -1, -1)
            values = kv[layer, 1][None].expand(batch, -1, -1, -1)
            cache.update(keys, values, layer)
        return cache

    def model_forward(self, model: PreTrainedModel, injected: Injected, **kwargs):  # noqa: ANN201
        """Run ``model`` on an injected batch; under gradient checkpointing the prefixes are a :class:`PrefixCache`."""
        if injected.cache is None or not gradient_checkpointing_active(model):
            return super().model_forward(model, injected, **kwargs)
        with cache_kept_under_checkpointing(model):
            return super().model_forward(model, replace(injected, cache=PrefixCache(injected.cache)), **kwargs)

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
        batch, length = input_ids.shape
        mask = torch.cat([attention_mask.new_ones(batch, self.n_virtual), attention_mask], dim=1)
        positions = positions_from_mask(attention_mask) + self.n_virtual
        cache = self.build_cache(model, batch, embeds.dtype)
        text_index = torch.arange(length, device=input_ids.device)[None].expand(batch, -1)
        return Injected(embeds, mask, positions, labels, cache, text_index)
