"""The settings of a CompLLM-style segment compressor, validated once.

Defaults follow CompLLM (Berton et al. 2025, arXiv 2509.19228): segments of about 20
tokens, compressed 2x into concept embeddings by the same LLM with a LoRA and a linear
head. softtok adds a parametrisation choice: each concept embedding is the mean of the
token embeddings it replaces plus the head's output (``residual="mean"``), with the head
zero-initialised (``head_init="zero"``), so an untrained compressor is mean pooling
(see :mod:`softtok.compression.compressor`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from softtok.prompts.config import _check_choice, _check_int

RESIDUALS = ("mean", "none")
HEAD_INITS = ("zero", "identity")


@dataclass
class CompressionConfig:
    """How a :class:`~softtok.compression.SegmentCompressor` splits and compresses a context.

    Attributes:
        segment_len: Context tokens per segment (CompLLM: ~20). Segments are compressed
            independently, so their concept embeddings can be cached and reused.
        ratio: Compression ratio: a segment of ``n`` tokens becomes ``ceil(n / ratio)``
            concept embeddings (CompLLM: 2). ``segment_len`` must be a multiple of it.
        lora_r: LoRA rank of the compressor's adapter.
        lora_alpha: LoRA scaling numerator (the update is ``alpha / r * B A x``).
        lora_dropout: Dropout on the LoRA input, in ``[0, 1)``.
        target_modules: Module names the LoRA wraps; ``None`` uses peft's default for the
            architecture (``q_proj``/``v_proj`` for Llama, Qwen2, Gemma; ``c_attn`` for GPT-2).
        residual: ``"mean"``: a concept embedding is the mean of its ``ratio`` token
            embeddings plus the head's output (softtok's default); ``"none"``: the head's
            output alone (pure CompLLM).
        head_init: ``"zero"``: the head starts at 0 (with ``residual="mean"``, an untrained
            compressor is exact mean pooling); ``"identity"``: weight ``I``, bias 0.

    Raises:
        ValueError: A value out of range or not allowed (the message names it and what is allowed).
    """

    segment_len: int = 20
    ratio: int = 2
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | None = field(default=None)
    residual: str = "mean"
    head_init: str = "zero"

    def __post_init__(self) -> None:
        _check_int("segment_len", self.segment_len, 1)
        _check_int("ratio", self.ratio, 1)
        _check_int("lora_r", self.lora_r, 1)
        _check_int("lora_alpha", self.lora_alpha, 1)
        if self.segment_len % self.ratio != 0:
            raise ValueError(f"segment_len={self.segment_len} is not divisible by ratio={self.ratio}; a segment must "
                             f"split into whole groups of ratio tokens (e.g. segment_len="
                             f"{max(self.ratio, self.segment_len - self.segment_len % self.ratio)})")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) \
                or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout!r} must be a number in [0, 1)")
        self.lora_dropout = float(self.lora_dropout)
        if self.target_modules is not None:
            if isinstance(self.target_modules, str) or not all(isinstance(m, str) and m
                                                              for m in self.target_modules) \
                    or not len(self.target_modules):
                raise ValueError(f"target_modules={self.target_modules!r} must be None (peft's default for the "
                                 "architecture) or a non-empty list of module names")
            self.target_modules = list(self.target_modules)
        _check_choice("residual", self.residual, RESIDUALS)
        _check_choice("head_init", self.head_init, HEAD_INITS)

    @property
    def max_groups(self) -> int:
        """Concept embeddings of a full segment (``segment_len / ratio``)."""
        return self.segment_len // self.ratio

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON, checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: Unknown keys (named, with the allowed ones) or bad values.
        """
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown compression config keys {unknown}; allowed: {', '.join(sorted(allowed))}")
        return cls(**data)
