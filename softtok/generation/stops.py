"""String detection in token streams on the device, without decoding text.

The generator must notice when the top-1 thinking stream has written ``think_end`` and
when an answer has written a stop string, whatever tokens spell them: ``"</think>"`` as
one token, as ``"</", "think", ">"``, or inside a token with trailing text
(``">\\n\\n"``). transformers' :class:`~transformers.StopStringCriteria` solves exactly
this with tables precomputed from the vocabulary (each token's possible positions inside
each string, in bytes for byte-level and byte-fallback vocabularies) and pure tensor
operations at run time: a string matches when it ends inside the newest token. This
module keeps, per row, the last ``window`` tokens of a stream (the longest string's byte
length: every token holds at least one byte) and asks the criterion, so detection is a
few tensor operations per step, with no host transfer and no graph break.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase, StopStringCriteria


class StreamMatcher:
    """Detect any of ``strings`` ending in the newest token of per-row token streams.

    Args:
        tokenizer: The model's tokenizer.
        strings: Strings to detect (non-empty).
        device: Where the tables live (the model's device).

    Raises:
        ValueError: If no token of the vocabulary can end one of the strings.

    Example:
        >>> matcher = StreamMatcher(tokenizer, ["</think>"], "cpu")
        >>> history = matcher.empty(batch=2)
        >>> history = matcher.push(history, next_ids, where=thinking)   # [2, window]
        >>> matcher.matched(history)                                     # [2] bool
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, strings: Sequence[str], device: torch.device | str) -> None:
        self.criteria = StopStringCriteria(tokenizer, list(strings))
        # Move the tables once, so the criterion's own `.to(device)` calls are no-ops.
        self.criteria.embedding_vec = self.criteria.embedding_vec.to(device)
        self.criteria.target_lens = self.criteria.target_lens.to(device)
        self.window = self.criteria.maximum_token_len
        #: An id that matches nothing: the criterion's dummy table row.
        self.filler = self.criteria.embedding_vec.shape[0] - 1
        self.device = device

    def empty(self, batch: int) -> torch.Tensor:
        """Histories of ``batch`` empty streams, ``[batch, window]`` int64."""
        return torch.full((batch, self.window), self.filler, dtype=torch.long, device=self.device)

    def push(self, history: torch.Tensor, ids: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Append ``ids`` ``[B]`` to the streams of the rows ``where`` ``[B]`` (bool); others unchanged."""
        shifted = torch.cat([history[:, 1:], ids[:, None]], dim=1)
        return torch.where(where[:, None], shifted, history)

    def matched(self, history: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: a string ends inside the newest token of each stream."""
        return self.criteria(history, None)
