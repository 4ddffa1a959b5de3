"""Contextual neighbours (LatentLens): an on-disk index of a model's hidden states over a text corpus.

Every stored vector is the hidden state of one *context*, a token prefix of a corpus
line, at the prefix's last token, at each chosen layer. As in LatentLens
(``McGill-NLP/latentlens``):

* a token-id prefix already seen is not stored again (in a causal LM it would give the
  same vector), so a repeated sentence adds nothing;
* at most ``max_contexts_per_token`` contexts are kept per token (first come, first served;
  LatentLens keeps 50), one decision shared by all layers;
* vectors are L2-normalised; a query is searched at every layer and the matches are
  merged across layers by cosine.

On disk, a directory: ``layer_<l>.npy`` per layer (``[N, D]`` float16 or float32, read
memory-mapped) and ``manifest.json``: the format version, the model's identity (name,
type, hidden size, layers, vocabulary size and a fingerprint of its embedding matrix's
first rows), the build settings, the corpus lines that contributed, and per vector its
token id, line and end character (the context text is ``texts[line][:end]``). Building
twice from the same inputs writes identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softtok.interpret.hidden import (
    check_layers,
    default_layers,
    forward_hidden,
    hidden_states,
    num_layers,
)
from softtok.interpret.vocab import check_width, token_strings
from softtok.models import replace_folder

#: Version of the index layout.
INDEX_FORMAT = 1
MANIFEST = "manifest.json"
#: Embedding rows hashed by :func:`model_identity`.
FINGERPRINT_ROWS = 16
#: Storage dtypes of the index vectors.
VECTOR_DTYPES = {"float16": np.float16, "float32": np.float32}
#: Identity fields that must agree between an index and the model it is used with.
_CHECKED = ("hidden_size", "num_layers", "vocab_size", "fingerprint")


def model_identity(model: PreTrainedModel) -> dict:
    """What identifies a model for an index: name, type, shapes and an embedding fingerprint.

    The fingerprint is a SHA-256 of the input embedding's shape and its first
    :data:`FINGERPRINT_ROWS` rows rounded to bfloat16, so the same weights loaded in float32
    or bfloat16 match while another model (or a retrained one) does not.
    """
    from softtok.prompts._arch import ModelInfo
    from softtok.prompts.peft_io import portable_name

    weight = model.get_input_embeddings().weight
    rows = weight[:FINGERPRINT_ROWS].detach().to(torch.bfloat16).float().cpu().numpy()
    digest = hashlib.sha256(repr(tuple(weight.shape)).encode() + rows.tobytes()).hexdigest()
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") \
        else model.config
    try:
        name = portable_name(ModelInfo.from_model(model))
    except ValueError:
        name = str(getattr(model, "name_or_path", "") or "")
    return {"name_or_path": name or "", "model_type": str(getattr(config, "model_type", "")),
            "hidden_size": int(weight.shape[1]), "num_layers": num_layers(model),
            "vocab_size": int(weight.shape[0]), "fingerprint": digest[:32]}


def load_corpus(corpus: str | os.PathLike | Sequence[str]) -> list[str]:
    """Corpus lines: a list of strings as given, or a text file's non-empty lines (newline removed)."""
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {str(path)!r} does not exist (pass a list of strings or a text "
                                    "file, one context per line)")
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = list(corpus)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"corpus holds non-strings, e.g. {bad[0]!r}; pass strings or a text file path")
    return [t for t in texts if t.strip()]


@dataclass(frozen=True)
class ContextMatch:
    """One contextual neighbour.

    Attributes:
        token_id: The id of the context's last token (the one whose hidden state matched).
        token: Its string.
        context: The context text (the corpus line up to and including that token).
        layer: The layer of the matching vector.
        cosine: Cosine between the query's and the stored hidden state at ``layer``.
        row: The vector's row in the index.
    """

    token_id: int
    token: str
    context: str
    layer: int
    cosine: float
    row: int


def _plan(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_contexts_per_token: int, min_position: int,
          max_length: int) -> tuple[list[list[int]], list[tuple[int, int, int, int]]]:
    """Token ids of every line and the contexts to store: ``(line, position, token_id, end)``.

    Only ids decide (no forward): a prefix is a node of a trie over token ids, so a prefix
    seen before (in any line) is skipped exactly, in memory linear in the corpus.
    """
    fast = getattr(tokenizer, "is_fast", False)
    trie: dict[tuple[int, int], int] = {}
    counts: dict[int, int] = {}
    lines, entries = [], []
    for line, text in enumerate(texts):
        enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=fast)
        ids = list(enc["input_ids"])
        lines.append(ids)
        node = -1
        for pos, token in enumerate(ids):
            key = (node, token)
            seen = key in trie
            if not seen:
                trie[key] = len(trie)
            node = trie[key]
            if seen or pos < min_position or counts.get(token, 0) >= max_contexts_per_token:
                continue
            counts[token] = counts.get(token, 0) + 1
            end = int(enc["offset_mapping"][pos][1]) if fast else -1
            entries.append((line, pos, token, end))
    return lines, entries


class ContextIndex:
    """A built index, opened memory-mapped (see the module docstring for the layout).

    Build with :meth:`build`, open with :meth:`load`, query with :meth:`search` (hidden
    states you computed) or :func:`contextual_neighbours` (input embeddings).

    Attributes:
        path: The index directory.
        manifest: The parsed ``manifest.json``.
        layers: The layers searched (those of the index, or the subset asked at load).
    """

    def __init__(self, path: Path, manifest: dict, layers: list[int]) -> None:
        self.path = path
        self.manifest = manifest
        self.layers = layers
        self._vectors = {layer: np.load(path / f"layer_{layer}.npy", mmap_mode="r") for layer in layers}
        entries = manifest["entries"]
        self._token_ids = entries["token_id"]
        self._lines = entries["line"]
        self._ends = entries["end"]
        self._contexts = entries.get("context")
        self._strings = manifest["token_strings"]

    def __len__(self) -> int:
        """Stored contexts (vectors per layer)."""
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        return f"ContextIndex({str(self.path)!r}, layers={self.layers}, contexts={len(self)})"

    # ------------------------------------------------------------------ build
    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        corpus: str | os.PathLike | Sequence[str],
        path: str | os.PathLike,
        layers: Sequence[int] | None = None,
        max_contexts_per_token: int = 50,
        min_position: int = 2,
        max_length: int = 512,
        batch_size: int = 16,
        dtype: str = "float16",
        overwrite: bool = False,
    ) -> ContextIndex:
        """Run ``model`` over ``corpus`` and write the index directory at ``path``.

        Args:
            model: The causal LM (its hidden states are indexed).
            tokenizer: Its tokenizer (lines are encoded as the tokenizer does by default,
                special tokens such as a BOS included).
            corpus: A list of strings or a text file (one line per context source).
            path: The directory to write (written beside it and renamed into place).
            layers: Layers in ``[0, L]``; default LatentLens's grid (:func:`default_layers`).
            max_contexts_per_token: Contexts kept per token id (LatentLens: 50).
            min_position: First position stored. The default, 2, skips each line's first two
                tokens as LatentLens does: their states are attention-sink outliers, which
                sink-like queries match with cosine ~1 whatever their token.
            max_length: Tokens per line (longer lines are cut).
            batch_size: Lines per forward (right-padded, so padding never reaches a stored state;
                the batch shapes can change the last bits of the states, so it is recorded).
            dtype: ``"float16"`` (half the disk) or ``"float32"`` for the stored vectors.
            overwrite: Replace an existing non-empty ``path``.

        Raises:
            ValueError: Before any forward, for layers out of range, a setting out of range,
                an empty corpus or a corpus in which no context qualifies.
            FileExistsError: ``path`` is a non-empty directory and ``overwrite`` is false.
        """
        n_layers = num_layers(model)
        layers = check_layers(default_layers(n_layers) if layers is None else layers, n_layers)
        for name, value, low in (("max_contexts_per_token", max_contexts_per_token, 1),
                                 ("min_position", min_position, 0), ("max_length", max_length, 1),
                                 ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if dtype not in VECTOR_DTYPES:
            raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(VECTOR_DTYPES)}")
        out = Path(path)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise FileExistsError(f"index path {str(out)!r} exists and is not empty; pass overwrite=True to replace it")
        texts = load_corpus(corpus)
        if not texts:
            raise ValueError("the corpus is empty (no non-blank lines)")
        lines, entries = _plan(tokenizer, texts, max_contexts_per_token, min_position, max_length)
        if not entries:
            raise ValueError(f"no context to store: every line is shorter than min_position + 1 = {min_position + 1} "
                             "tokens or repeats an earlier prefix")
        used = sorted({e[0] for e in entries})
        renumber = {line: i for i, line in enumerate(used)}
        width = model.get_input_embeddings().weight.shape[1]
        device = model.get_input_embeddings().weight.device
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            arrays = {layer: np.lib.format.open_memmap(tmp / f"layer_{layer}.npy", mode="w+",
                                                       dtype=VECTOR_DTYPES[dtype], shape=(len(entries), width))
                      for layer in layers}
            row = 0
            by_line: dict[int, list[int]] = {}
            for line, pos, _, _ in entries:
                by_line.setdefault(line, []).append(pos)
            for start in range(0, len(used), batch_size):
                batch = used[start:start + batch_size]
                longest = max(len(lines[line]) for line in batch)
                ids = torch.zeros(len(batch), longest, dtype=torch.long)
                mask = torch.zeros(len(batch), longest, dtype=torch.long)
                for b, line in enumerate(batch):  # right padding: causal attention never sees it
                    ids[b, :len(lines[line])] = torch.tensor(lines[line])
                    mask[b, :len(lines[line])] = 1
                states = forward_hidden(model, layers, input_ids=ids.to(device), attention_mask=mask.to(device))
                rows_b = torch.tensor([b for b, line in enumerate(batch) for _ in by_line[line]])
                rows_p = torch.tensor([p for line in batch for p in by_line[line]])
                picked = states[:, rows_b.to(device), rows_p.to(device)]  # [L, n, D]
                picked = picked / picked.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                for i, layer in enumerate(layers):
                    arrays[layer][row:row + picked.shape[1]] = picked[i].cpu().numpy()
                row += picked.shape[1]
            for array in arrays.values():
                array.flush()
            del arrays
            strings = token_strings(tokenizer, sorted({e[2] for e in entries}))
            contexts = None
            if not getattr(tokenizer, "is_fast", False):  # no offsets: store the decoded prefixes
                contexts = [tokenizer.decode(lines[line][:pos + 1], skip_special_tokens=True)
                            for line, pos, _, _ in entries]
            manifest = {
                "format": INDEX_FORMAT,
                "model": model_identity(model),
                "layers": layers,
                "dtype": dtype,
                "count": len(entries),
                "settings": {"max_contexts_per_token": max_contexts_per_token, "min_position": min_position,
                             "max_length": max_length, "batch_size": batch_size},
                "corpus_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
                "texts": [texts[line] for line in used],
                "token_strings": {str(i): s for i, s in zip(sorted({e[2] for e in entries}), strings, strict=True)},
                "entries": {"token_id": [e[2] for e in entries], "line": [renumber[e[0]] for e in entries],
                            "position": [e[1] for e in entries], "end": [e[3] for e in entries],
                            **({"context": contexts} if contexts is not None else {})},
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, sort_keys=True) + "\n",
                                        encoding="utf-8")
            os.chmod(tmp, 0o755)
            replace_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.load(out)

    # ------------------------------------------------------------------- load
    @classmethod
    def load(cls, path: str | os.PathLike, model: PreTrainedModel | None = None,
             layers: Sequence[int] | None = None) -> ContextIndex:
        """Open an index directory (vectors memory-mapped).

        Args:
            path: The directory :meth:`build` wrote.
            model: If given, the index must have been built for it (see :meth:`check`).
            layers: If given, search only these layers; each must be in the index.

        Raises:
            FileNotFoundError: No ``manifest.json`` or a missing layer file.
            ValueError: Another index format, another model, or layers the index lacks.
        """
        folder = Path(path)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"no {MANIFEST} in {str(folder)!r}: not a softtok context index "
                                    "(build one with softtok.interpret.ContextIndex.build)")
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != INDEX_FORMAT:
            raise ValueError(f"{str(folder)!r}: index format {manifest.get('format')!r}; this softtok reads "
                             f"format {INDEX_FORMAT}")
        index_layers = list(manifest["layers"])
        chosen = index_layers if layers is None else list(layers)
        missing = [layer for layer in chosen if layer not in index_layers]
        if missing or not chosen:
            raise ValueError(f"{str(folder)!r} was built for layers {index_layers}; layers={list(chosen)} asks for "
                             f"{missing or 'none'}, which it does not hold: ask a subset of {index_layers} or "
                             "rebuild the index with these layers")
        for layer in chosen:
            if not (folder / f"layer_{layer}.npy").is_file():
                raise FileNotFoundError(f"{str(folder)!r}: layer_{layer}.npy is missing")
        index = cls(folder, manifest, sorted(chosen))
        if model is not None:
            index.check(model)
        return index

    def check(self, model: PreTrainedModel) -> None:
        """Raise ``ValueError`` unless the index was built for ``model`` (shapes and embedding fingerprint)."""
        mine, theirs = self.manifest["model"], model_identity(model)
        for key in _CHECKED:
            if mine.get(key) != theirs[key]:
                raise ValueError(
                    f"the index {str(self.path)!r} was built for another model: {key}={mine.get(key)!r} there "
                    f"({mine.get('model_type')} {mine.get('name_or_path')!r}) but {key}={theirs[key]!r} for this "
                    f"model ({theirs['model_type']} {theirs['name_or_path']!r}); rebuild the index with this model")
        bad = [layer for layer in self.layers if layer > theirs["num_layers"]]
        if bad:  # unreachable when num_layers matches; kept for hand-edited manifests
            raise ValueError(f"index layers {bad} exceed the model's {theirs['num_layers']} layers")

    # ----------------------------------------------------------------- search
    def context(self, row: int) -> str:
        """The context text of vector ``row``."""
        if self._contexts is not None:
            return self._contexts[row]
        return self.manifest["texts"][self._lines[row]][:self._ends[row]]

    def match(self, row: int, layer: int, cosine: float) -> ContextMatch:
        """The :class:`ContextMatch` of vector ``row`` at ``layer``."""
        token = self._token_ids[row]
        return ContextMatch(token, self._strings[str(token)], self.context(row), layer, cosine, row)

    @torch.no_grad()
    def search(self, queries: torch.Tensor, top_n: int = 5, chunk_size: int = 65536) -> list[list[ContextMatch]]:
        """The ``top_n`` nearest stored contexts of each query, merged across layers by cosine.

        Args:
            queries: ``[len(self.layers), N, D]`` hidden states, one slice per layer of
                :attr:`layers` (as :func:`~softtok.interpret.hidden.hidden_states` returns
                them), or ``[N, D]`` when the index has one layer.
            top_n: Matches per query (at most the number of stored vectors over all layers).
            chunk_size: Stored rows scored at a time.

        Returns:
            Per query, ``top_n`` matches, largest cosine first.

        Raises:
            ValueError: Queries of another shape, or ``top_n < 1``.
        """
        if queries.ndim == 2 and len(self.layers) == 1:
            queries = queries[None]
        width = int(self.manifest["model"]["hidden_size"])
        if queries.ndim != 3 or queries.shape[0] != len(self.layers) or queries.shape[2] != width:
            raise ValueError(f"queries have shape {tuple(queries.shape)}; expected [layers={len(self.layers)} "
                             f"(for {self.layers}), N, D={width}]")
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            raise ValueError(f"top_n={top_n!r} must be an integer >= 1")
        q = queries.detach().float().cpu()
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores, rows, layer_of = [], [], []
        for i, layer in enumerate(self.layers):  # per-layer top-n, then the merge over layers
            vectors = self._vectors[layer]
            best: tuple[torch.Tensor, torch.Tensor] | None = None
            for start in range(0, len(vectors), chunk_size):
                block = torch.from_numpy(np.array(vectors[start:start + chunk_size], dtype=np.float32))
                sims = q[i] @ block.T
                ids = torch.arange(start, start + block.shape[0])[None].expand(sims.shape[0], -1)
                if best is not None:
                    sims, ids = torch.cat([best[0], sims], 1), torch.cat([best[1], ids], 1)
                top, pos = sims.topk(min(top_n, sims.shape[1]), dim=1)
                best = (top, ids.gather(1, pos))
            scores.append(best[0])
            rows.append(best[1])
            layer_of.append(torch.full_like(best[1], layer))
        scores, rows, layer_of = torch.cat(scores, 1), torch.cat(rows, 1), torch.cat(layer_of, 1)
        top, pos = scores.topk(min(top_n, scores.shape[1]), dim=1)
        return [[self.match(int(rows[n, p]), int(layer_of[n, p]), float(top[n, j])) for j, p in enumerate(pos[n])]
                for n in range(q.shape[1])]


def contextual_neighbours(
    model: PreTrainedModel,
    index: ContextIndex,
    embeds: torch.Tensor,
    prefix_ids: Sequence[int] | torch.Tensor | None = None,
    top_n: int = 5,
) -> list[list[ContextMatch]]:
    """Feed ``prefix_ids`` + ``embeds`` to ``model`` and search the index with the soft positions' hidden states.

    Args:
        model: The model the index was built for.
        index: The :class:`ContextIndex`.
        embeds: ``[N, D]`` input embeddings (soft prompt rows, concept tokens...).
        prefix_ids: Token ids fed before them (e.g. the chat prompt), or ``None``.
        top_n: Matches per soft position, merged across the index's layers.

    Raises:
        ValueError: Before the forward, for an index of another model, a width other than the
            model's, or ``top_n < 1``.
    """
    index.check(model)
    check_width(embeds, model.get_input_embeddings().weight.shape[1])
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"top_n={top_n!r} must be an integer >= 1")
    return index.search(hidden_states(model, embeds, index.layers, prefix_ids), top_n=top_n)

