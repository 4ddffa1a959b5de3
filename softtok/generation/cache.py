"""KV-cache operations the decode loops need, on every cache layer type transformers ships.

Undoing steps (:func:`snapshot_cache`, :func:`restore_cache`) works on every layer type;
dropping finished rows only on :data:`ROW_SELECTABLE_LAYERS` (dynamic and sliding-window).
The Soft Thinking engine therefore drops rows only from such caches and keeps finished
rows (masked) in any other; the answer-only ``greedy_generate`` refuses other caches for
a batch up front (:func:`check_rows_removable`).

Some passes must leave the cache as they found it: the single-threaded probe feeds two
alternative inputs at the same position before the real one. ``Cache.crop`` cannot do
this in general: a sliding-window layer that has reached its window has already evicted
the entry a crop would need back, and transformers refuses. Instead,
:func:`snapshot_cache` records each layer's state and :func:`restore_cache` puts it back
exactly:

* layers whose ``update`` builds new tensors (``DynamicLayer`` and
  ``DynamicSlidingWindowLayer``: ``torch.cat`` then slice) are restored by putting the
  old tensor objects back: no copy, O(layers) work per restore;
* any other layer (static buffers written in place, quantised, offloaded, linear-attention
  states, and layer types added later) is restored from clones, copied back into the
  original tensors, so static addresses stay valid for CUDA graphs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Cache, cache_utils
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

#: Layer types whose updates replace their tensors instead of writing into them.
FUNCTIONAL_LAYERS: tuple[type, ...] = (DynamicLayer, DynamicSlidingWindowLayer)
#: Layer types whose ``batch_select_indices`` removes rows from all of their state (static layers
#: have none; quantised and linear-attention layers would keep part of their state unselected).
ROW_SELECTABLE_LAYERS: tuple[type, ...] = tuple(
    getattr(cache_utils, name)
    for name in ("DynamicLayer", "DynamicSlidingWindowLayer", "DynamicIndexedLayer", "DummyLayer")
    if hasattr(cache_utils, name)
)


@dataclass(frozen=True)
class CacheSnapshot:
    """The saved state of a cache (see :func:`snapshot_cache`).

    Attributes:
        cache_state: The cache object's own attributes (shallow).
        layers: Per layer: the layer object and ``{name: (value, clone or None)}``.
    """

    cache_state: dict[str, Any]
    layers: tuple[tuple[Any, dict[str, tuple[Any, Any]]], ...]


def _saved(value: Any, functional: bool) -> tuple[Any, Any]:
    if functional:
        return value, None
    if torch.is_tensor(value):
        return value, value.clone()
    if isinstance(value, (list, tuple, dict)):
        return value, copy.deepcopy(value)  # nested states (lists of tensors): cloned with their containers
    return value, None


def snapshot_cache(cache: Cache) -> CacheSnapshot:
    """Record ``cache``'s state so that :func:`restore_cache` can undo any later forward pass.

    Args:
        cache: Any transformers :class:`~transformers.Cache` (dynamic, sliding, hybrid, static...).

    Returns:
        A snapshot; it holds references (and, for in-place layer types, clones) of the states.
    """
    layers = []
    for layer in cache.layers:
        functional = type(layer) in FUNCTIONAL_LAYERS
        layers.append((layer, {name: _saved(value, functional) for name, value in vars(layer).items()}))
    return CacheSnapshot(dict(vars(cache)), tuple(layers))


def _restore_value(value: Any, clone: Any) -> Any:
    if clone is None:
        return value
    if torch.is_tensor(value):
        if value.shape == clone.shape:
            value.copy_(clone)  # in place: keeps the buffer's address (static caches, CUDA graphs)
            return value
        return clone
    return copy.deepcopy(clone)  # keep the snapshot reusable for a second restore


def check_rows_removable(cache: Cache, batch_size: int) -> None:
    """Refuse, before decoding, a cache that finished rows could not leave.

    :func:`~softtok.prompts.generate.greedy_generate` drops finished rows from the batch and
    the cache (``cache.batch_select_indices``); that works on dynamic and sliding-window
    layers only.

    Args:
        cache: The cache the prefill builder returned.
        batch_size: Rows in the batch (a single row never needs removing).

    Raises:
        ValueError: For ``batch_size > 1`` and a layer of another type, naming it.
    """
    if batch_size < 2:
        return
    other = sorted({type(layer).__name__ for layer in cache.layers if type(layer) not in ROW_SELECTABLE_LAYERS})
    if other:
        allowed = ", ".join(t.__name__ for t in ROW_SELECTABLE_LAYERS)
        raise ValueError(
            f"batched decoding drops finished rows from the KV cache, which {', '.join(other)} layers cannot do "
            f"(allowed: {allowed}); build the prefill with a DynamicCache (as plain_prefill and the soft prompts "
            f"do) or generate one prompt at a time (batch of {batch_size} here)"
        )


def restore_cache(cache: Cache, snapshot: CacheSnapshot) -> None:
    """Put ``cache`` back in the state recorded by :func:`snapshot_cache` (may be called repeatedly)."""
    vars(cache).clear()
    vars(cache).update(snapshot.cache_state)
    cache.layers[:] = [layer for layer, _ in snapshot.layers]
    for layer, state in snapshot.layers:
        vars(layer).clear()
        vars(layer).update({name: _restore_value(value, clone) for name, (value, clone) in state.items()})


def kv_bytes(cache: Cache) -> int:
    """Bytes held by every key and value tensor of ``cache`` (the KV-cache size, in bytes)."""
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if isinstance(t, torch.Tensor))
