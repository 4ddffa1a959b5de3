"""Vocabulary neighbours: the vocabulary rows nearest to any ``[N, D]`` input embeddings.

The rows are the ones the model is fed: each chunk of ids goes through the model's input
embedding module (as :func:`~softtok.soft.embedding.embed_sparse` does), so an embedding
scale such as Gemma's ``sqrt(D)`` (:func:`~softtok.soft.embedding.embedding_scale`) is
applied to the vocabulary exactly as it is to the soft tokens being read. The scores are
taken chunk by chunk over the queries and the vocabulary, so a 50k x 576 vocabulary
needs only ``chunk_size ** 2`` scores at a time, and a running top-``n`` is kept. L2
candidates are chosen with ``|q|^2 - 2 q.r + |r|^2`` (one matrix product) and their
distances recomputed exactly as ``|q - r|``, so a query equal to a row gets distance 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

_EPS = 1e-12


@dataclass(frozen=True)
class Neighbours:
    """The ``n`` nearest vocabulary rows of each query under one metric.

    Attributes:
        metric: ``"cosine"`` (scores descending) or ``"l2"`` (Euclidean distances, ascending).
        ids: ``[N, n]`` token ids, nearest first.
        scores: ``[N, n]`` float32 cosines or distances.
        tokens: ``tokens[i][j]`` is ``tokenizer.decode([ids[i, j]])`` (``None`` without a tokenizer).
    """

    metric: str
    ids: torch.Tensor
    scores: torch.Tensor
    tokens: list[list[str]] | None = None


@dataclass(frozen=True)
class VocabNeighbours:
    """Nearest vocabulary rows by cosine and by L2 distance (:func:`vocab_neighbours`).

    Attributes:
        cosine: Largest cosine first.
        l2: Smallest Euclidean distance first.
        norms: ``[N]`` the queries' L2 norms.
        vocab_norm: Median L2 norm of the (scaled) vocabulary rows, to compare with ``norms``.
    """

    cosine: Neighbours
    l2: Neighbours
    norms: torch.Tensor
    vocab_norm: float


def input_embedding(model_or_embedding: nn.Module) -> nn.Module:
    """The input embedding module of a model (``get_input_embeddings()``), or the module itself."""
    get = getattr(model_or_embedding, "get_input_embeddings", None)
    return get() if callable(get) else model_or_embedding


def token_strings(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """``tokenizer.decode([id])`` for each id (one decode per distinct id)."""
    cache: dict[int, str] = {}
    for i in ids:
        if i not in cache:
            cache[i] = tokenizer.decode([i])
    return [cache[i] for i in ids]


def check_width(embeds: torch.Tensor, width: int, what: str = "embeds") -> torch.Tensor:
    """``embeds`` as ``[N, D]`` (a single ``[D]`` row is accepted); raise unless ``D == width`` and finite."""
    if embeds.ndim == 1:
        embeds = embeds[None]
    if embeds.ndim != 2:
        raise ValueError(f"{what} has shape {tuple(embeds.shape)}; expected [N, D] with D = the model's hidden "
                         f"size {width}")
    if embeds.shape[1] != width:
        raise ValueError(f"{what} width {embeds.shape[1]} (shape {tuple(embeds.shape)}) differs from the model's "
                         f"embedding width (hidden size) {width}: these embeddings belong to another model")
    if not torch.is_floating_point(embeds) or not torch.isfinite(embeds).all():
        raise ValueError(f"{what} must be finite floating-point values (dtype {embeds.dtype})")
    return embeds


def _merge(best: tuple[torch.Tensor, torch.Tensor] | None, scores: torch.Tensor, ids: torch.Tensor, n: int,
           largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``n`` best of the running best and a new chunk (``scores``/``ids`` ``[Q, C]``)."""
    if best is not None:
        scores, ids = torch.cat([best[0], scores], 1), torch.cat([best[1], ids], 1)
    top, pos = scores.topk(min(n, scores.shape[1]), dim=1, largest=largest, sorted=True)
    return top, ids.gather(1, pos)


@torch.no_grad()
def vocab_neighbours(
    embeds: torch.Tensor,
    model_or_embedding: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None = None,
    n: int = 5,
    chunk_size: int = 2048,
) -> VocabNeighbours:
    """The ``n`` vocabulary rows nearest to each of ``embeds``, by cosine and by L2 distance.

    Args:
        embeds: ``[N, D]`` (or ``[D]``) input embeddings: concept tokens, noisy RL inputs, rows
            of a tuned soft prompt... in the space the model is fed (after any embedding scale).
        model_or_embedding: The model, or its input embedding module.
        tokenizer: Decodes the ids into ``tokens`` (optional).
        n: Neighbours per query, ``1 <= n <= V``.
        chunk_size: Queries and vocabulary rows per block of scores (memory ``chunk_size ** 2``).

    Returns:
        :class:`VocabNeighbours`; scores in float32.

    Raises:
        ValueError: Before any work, for ``embeds`` of another width than the model's embeddings
            (or not 2-D, or non-finite), ``n`` outside ``[1, V]`` or ``chunk_size < 1``.

    Example:
        >>> near = vocab_neighbours(prompt.prompt_embeddings, model, tokenizer, n=3)
        >>> near.cosine.tokens[0], near.cosine.scores[0]
    """
    embedding = input_embedding(model_or_embedding)
    vocab, width = embedding.weight.shape
    embeds = check_width(embeds, width)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= vocab:
        raise ValueError(f"n={n!r} neighbours: it must be an integer in [1, {vocab}] (the vocabulary size)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be an integer >= 1")
    device = embedding.weight.device
    queries = embeds.detach().to(device=device, dtype=torch.float32)
    norms = queries.norm(dim=1)
    unit = queries / norms[:, None].clamp_min(_EPS)
    squares = queries.pow(2).sum(1)
    cos_best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(range(0, len(queries), chunk_size))
    l2_best = list(cos_best)
    row_norms = []
    for start in range(0, vocab, chunk_size):
        ids = torch.arange(start, min(vocab, start + chunk_size), device=device)
        rows = embedding(ids).float()  # through the module: any embedding scale is applied
        rows_norm = rows.norm(dim=1)
        row_norms.append(rows_norm)
        rows_unit = rows / rows_norm[:, None].clamp_min(_EPS)
        for j, q in enumerate(range(0, len(queries), chunk_size)):
            block = slice(q, q + chunk_size)
            chunk_ids = ids[None].expand(unit[block].shape[0], -1)
            cos_best[j] = _merge(cos_best[j], unit[block] @ rows_unit.T, chunk_ids, n, largest=True)
            dist2 = squares[block, None] - 2 * queries[block] @ rows.T + rows_norm.pow(2)[None]
            l2_best[j] = _merge(l2_best[j], dist2.clamp_min(0).sqrt(), chunk_ids, n, largest=False)

    def collect(metric: str, best: list) -> Neighbours:
        if not best:  # no queries
            empty = torch.zeros(0, n, device=device)
            return Neighbours(metric, empty.long(), empty, [] if tokenizer is not None else None)
        scores, ids = torch.cat([b[0] for b in best]), torch.cat([b[1] for b in best])
        if metric == "l2":  # exact distances of the chosen rows (the expansion above loses ~1e-3 to cancellation)
            exact = (queries[:, None] - embedding(ids).float()).norm(dim=-1)
            scores, order = exact.sort(dim=1, stable=True)
            ids = ids.gather(1, order)
        tokens = None
        if tokenizer is not None:
            flat = token_strings(tokenizer, ids.flatten().tolist())
            tokens = [flat[i * ids.shape[1]:(i + 1) * ids.shape[1]] for i in range(ids.shape[0])]
        return Neighbours(metric, ids.cpu(), scores.cpu(), tokens)

    vocab_norm = float(torch.cat(row_norms).median())
    return VocabNeighbours(collect("cosine", cos_best), collect("l2", l2_best), norms.cpu(), vocab_norm)
