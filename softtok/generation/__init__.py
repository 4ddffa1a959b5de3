"""Batched generation with soft tokens: the Soft Thinking decode loop and its configuration."""

from softtok.generation.cache import CacheSnapshot, check_rows_removable, restore_cache, snapshot_cache
from softtok.generation.config import MODES, GenerationConfig
from softtok.generation.generator import GenerationResult, SoftThinkingGenerator, js_divergence
from softtok.generation.prefill import Prefill, PrefillBuilder, plain_prefill, positions_from_mask, prefill_logits

__all__ = [
    "CacheSnapshot",
    "MODES",
    "GenerationConfig",
    "GenerationResult",
    "Prefill",
    "PrefillBuilder",
    "SoftThinkingGenerator",
    "check_rows_removable",
    "js_divergence",
    "plain_prefill",
    "positions_from_mask",
    "prefill_logits",
    "restore_cache",
    "snapshot_cache",
]
