"""Batched generation with soft tokens: the Soft Thinking decode loop and its configuration."""

from softtok.generation.cache import CacheSnapshot, check_rows_removable, restore_cache, snapshot_cache
from softtok.generation.config import MODES, GenerationConfig
from softtok.generation.generator import GenerationResult, SoftThinkingGenerator, default_seeds, js_divergence
from softtok.generation.prefill import Prefill, PrefillBuilder, plain_prefill, positions_from_mask, prefill_logits
from softtok.generation.stops import StreamMatcher

__all__ = [
    "CacheSnapshot",
    "MODES",
    "GenerationConfig",
    "GenerationResult",
    "Prefill",
    "PrefillBuilder",
    "SoftThinkingGenerator",
    "StreamMatcher",
    "check_rows_removable",
    "default_seeds",
    "js_divergence",
    "plain_prefill",
    "positions_from_mask",
    "prefill_logits",
    "restore_cache",
    "snapshot_cache",
]
