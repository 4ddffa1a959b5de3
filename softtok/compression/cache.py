"""A content-addressed cache of segment concept embeddings (CompLLM's reuse across queries).

CompLLM compresses segments independently, so a segment that recurs (the same document
asked about again, a shared preamble) needs compressing once. The key is a SHA-256 of the
compressor's weight fingerprint and the segment's token ids, so a retrained or reloaded
compressor with other weights never hits entries written by an older one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from softtok.compression.compressor import SegmentCompressor


def segment_key(fingerprint: str, segment: Sequence[int]) -> str:
    """SHA-256 hex of a compressor fingerprint and a segment's ids (int64, little-endian)."""
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(b"\0")
    digest.update(b"".join(int(t).to_bytes(8, "little", signed=True) for t in segment))
    return digest.hexdigest()


class SegmentCache:
    """LRU map from (compressor weights, segment ids) to the segment's ``[k, D]`` concept embeddings.

    Args:
        max_entries: Most segments kept; the least recently used is evicted first. ``None``: unbounded.

    Attributes:
        hits: Lookups answered from the cache.
        misses: Lookups that had to be encoded.

    Raises:
        ValueError: ``max_entries`` is not an integer >= 1 (or ``None``).
    """

    def __init__(self, max_entries: int | None = 10_000) -> None:
        if max_entries is not None and (isinstance(max_entries, bool) or not isinstance(max_entries, int)
                                        or max_entries < 1):
            raise ValueError(f"max_entries={max_entries!r} must be an integer >= 1 or None")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._store.clear()
        self.hits = self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        """The stored tensor for ``key`` (marked most recently used), or ``None``; not counted."""
        value = self._store.get(key)
        if value is not None:
            self._store.move_to_end(key)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        """Store ``value`` (detached) under ``key``, evicting the least recently used entries past ``max_entries``."""
        self._store[key] = value.detach()
        self._store.move_to_end(key)
        while self.max_entries is not None and len(self._store) > self.max_entries:
            self._store.popitem(last=False)

    def lookup(
        self,
        compressor: SegmentCompressor,
        segments: Sequence[Sequence[int]],
        encode: Callable[[list[list[int]]], list[torch.Tensor]],
    ) -> list[torch.Tensor]:
        """CEs of ``segments``: stored ones from the cache, the others from one ``encode`` call (then stored).

        Repeated segments within one call are encoded once.
        """
        fingerprint = compressor.fingerprint()
        keys = [segment_key(fingerprint, seg) for seg in segments]
        out: list[torch.Tensor | None] = []
        todo: dict[str, list[int]] = {}
        for key, seg in zip(keys, segments, strict=True):
            value = self.get(key)
            if value is None and key not in todo:
                todo[key] = [int(t) for t in seg]
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            out.append(value)
        encoded: dict[str, torch.Tensor] = {}
        if todo:
            fresh = encode(list(todo.values()))
            encoded = {key: value.detach().clone() for key, value in zip(todo, fresh, strict=True)}
            for key, value in encoded.items():  # clones: an entry must not keep its whole batch alive
                self.put(key, value)
        return [value if value is not None else encoded[key] for key, value in zip(keys, out, strict=True)]
