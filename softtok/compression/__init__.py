"""CompLLM-style soft context compression: segments -> concept embeddings, plain PyTorch (no Lightning).

See :mod:`softtok.compression.compressor` for the architecture and the ``CE = mean + head(h)``
parametrisation, :mod:`softtok.compression.prefill` for the inference path through the
generator's prefill contract, and :mod:`softtok.compression.train` for the distillation loss.
"""

from softtok.compression.cache import SegmentCache, segment_key
from softtok.compression.compressor import (
    SegmentCompressor,
    compressed_length,
    eos_token_id,
    max_positions,
    split_segments,
)
from softtok.compression.config import HEAD_INITS, RESIDUALS, CompressionConfig
from softtok.compression.prefill import (
    CompressedContext,
    Spliced,
    check_fits,
    context_spans,
    splice_context,
    truncate_context,
)
from softtok.compression.train import distillation_loss

__all__ = [
    "HEAD_INITS",
    "RESIDUALS",
    "CompressedContext",
    "CompressionConfig",
    "SegmentCache",
    "SegmentCompressor",
    "Spliced",
    "check_fits",
    "compressed_length",
    "context_spans",
    "distillation_loss",
    "eos_token_id",
    "max_positions",
    "segment_key",
    "splice_context",
    "split_segments",
    "truncate_context",
]
