"""``softtok describe``: read a trained soft prompt or a predictions file's concept tokens.

For each virtual token of a prompt-tuning prompt (a PEFT adapter folder or a softtok
Lightning checkpoint), or each concept token of a Soft Thinking predictions JSONL
(records with ``topk_ids`` / ``topk_weights``), it prints a ``rich`` table of the
nearest vocabulary tokens by cosine and by L2 distance and, given a context index
(:class:`~softtok.interpret.index.ContextIndex`), the nearest contexts; and writes
the same as JSON (atomically)::

    softtok describe -c configs/interpret/soft_prompt.yaml --prompt adapters/pt
    softtok describe -c configs/interpret/predictions.yaml --predictions outputs/soft_thinking/soft.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softtok.interpret.index import ContextIndex, ContextMatch, contextual_neighbours, model_identity
from softtok.interpret.vocab import VocabNeighbours, token_strings, vocab_neighbours
from softtok.soft.embedding import embed_sparse
from softtok.soft.token import SoftToken

#: What a predictions file needs, and how to get it.
TRACE_HINT = ("rerun `softtok predict` with --model.init_args.keep_trace true "
              "--model.init_args.generation.return_topk true")


# ---------------------------------------------------------------------------------------------- inputs
def prompt_base_model(path: str | Path) -> str | None:
    """The base model recorded with a soft prompt (PEFT ``base_model_name_or_path`` or the checkpoint's)."""
    path = Path(path)
    if path.is_dir():
        from softtok.prompts.peft_io import read_peft_adapter

        return read_peft_adapter(path)[0].get("base_model_name_or_path")
    from softtok.prompts.checkpoint import META_KEY, load_checkpoint

    return load_checkpoint(path)[META_KEY].get("base_model")


def load_prompt_embeddings(path: str | Path, model: PreTrainedModel, check_base_model: bool = True) -> torch.Tensor:
    """The ``[P, D]`` input embeddings of a prompt-tuning prompt: a PEFT adapter folder or a softtok ``.ckpt``.

    Raises:
        FileNotFoundError: Neither an adapter folder nor a checkpoint file.
        ValueError: Another method than prompt tuning (prefixes and IAPT are not input
            embeddings), or a prompt built for another model (the message names the values).
    """
    from softtok.prompts.peft_io import _base_key, load_peft_adapter
    from softtok.prompts.tuning import PromptTuning

    path = Path(path)
    if path.is_dir():
        prompt = load_peft_adapter(path, model, check_base_model=check_base_model)
    elif path.is_file():
        from softtok.prompts.checkpoint import META_KEY, load_checkpoint, prompt_from_checkpoint

        checkpoint = load_checkpoint(path)
        base, name = checkpoint[META_KEY].get("base_model"), getattr(model, "name_or_path", "")
        if check_base_model and base and name and _base_key(base) != _base_key(name):
            raise ValueError(f"{str(path)!r} was trained on base model {base!r} but the model is {name!r}; "
                             "set check_base_model false if they are the same weights")
        prompt = prompt_from_checkpoint(checkpoint)
        width = model.get_input_embeddings().weight.shape[1]
        if isinstance(prompt, PromptTuning) and prompt.info.hidden_size != width:
            raise ValueError(f"{str(path)!r} holds a prompt of hidden size {prompt.info.hidden_size} but the model's "
                             f"hidden size is {width}: the prompt was trained on another model")
    else:
        raise FileNotFoundError(f"prompt={str(path)!r} is neither a PEFT adapter folder nor a checkpoint file")
    if not isinstance(prompt, PromptTuning):
        raise ValueError(f"{str(path)!r} holds a {prompt.method!r} prompt: only prompt tuning feeds input embeddings "
                         "(prefix tuning and IAPT act on keys/values inside the layers), so only it has vocabulary "
                         "neighbours")
    return prompt.prompt_embeddings.detach()


def read_predictions(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Records of a predictions JSONL that carry concept-token mixtures, and the run's settings (if recorded).

    Raises:
        FileNotFoundError: No such file.
        ValueError: No records, or records without ``topk_ids`` / ``topk_weights`` (the message
            names the missing field and the flags that write it).
    """
    from softtok.callbacks import read_jsonl

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"predictions={str(path)!r} is a directory; give the .jsonl file softtok predict wrote")
    if not path.is_file():
        raise FileNotFoundError(f"predictions={str(path)!r} does not exist")
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"{str(path)!r} holds no records")
    for field in ("topk_ids", "topk_weights"):
        if field not in records[0]:
            raise ValueError(f"{str(path)!r}: the records have no {field!r} field (the run had keep_trace off); "
                             f"{TRACE_HINT}")
        if records[0][field] is None:
            raise ValueError(f"{str(path)!r}: the records' {field!r} is null (the run had generation.return_topk "
                             f"off); {TRACE_HINT}")
    settings_file = path.with_name(path.name + ".settings.json")
    settings = None
    if settings_file.is_file():
        settings = json.loads(settings_file.read_text(encoding="utf-8")).get("settings")
    return records, settings


def concept_embeddings(model: PreTrainedModel, record: dict[str, Any]) -> tuple[torch.Tensor, SoftToken]:
    """``[T, D]`` input embeddings ``sum_k w_k * embed(id_k)`` of a record's concept tokens, and the mixtures.

    Raises:
        ValueError: ``topk_ids`` and ``topk_weights`` of different shapes, or ids outside the vocabulary.
    """
    embedding = model.get_input_embeddings()
    ids, weights = record["topk_ids"], record["topk_weights"]
    if len(ids) != len(weights) or any(len(a) != len(b) for a, b in zip(ids, weights, strict=True)):
        raise ValueError(f"record {record.get('index')}: topk_ids and topk_weights differ in shape")
    device = embedding.weight.device
    if not ids:
        return torch.zeros(0, embedding.weight.shape[1], device=device), SoftToken(
            torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1))
    soft = SoftToken(torch.tensor(ids, dtype=torch.long, device=device),
                     torch.tensor(weights, dtype=torch.float32, device=device))
    vocab = embedding.weight.shape[0]
    if int(soft.ids.max()) >= vocab or int(soft.ids.min()) < 0:
        raise ValueError(f"record {record.get('index')}: topk_ids holds id {int(soft.ids.max())} outside the "
                         f"vocabulary of {vocab}: the predictions were made with another model")
    return embed_sparse(embedding, soft), soft


# --------------------------------------------------------------------------------------------- reading
def _neighbour_rows(near: VocabNeighbours) -> list[dict[str, Any]]:
    rows = []
    for i in range(near.cosine.ids.shape[0]):
        def entries(nb, i=i):  # noqa: ANN001, ANN202
            return [{"id": int(t), "token": s, "score": round(float(v), 6)}
                    for t, s, v in zip(nb.ids[i], nb.tokens[i], nb.scores[i], strict=True)]
        rows.append({"norm": round(float(near.norms[i]), 6), "cosine": entries(near.cosine), "l2": entries(near.l2)})
    return rows


def _contexts(matches: list[ContextMatch]) -> list[dict[str, Any]]:
    return [{"token": m.token, "context": m.context, "layer": m.layer, "cosine": round(m.cosine, 6)}
            for m in matches]


def read_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, embeds: torch.Tensor,
                    top_n: int = 5, index: ContextIndex | None = None, prefix_ids: list[int] | None = None,
                    index_top_n: int = 3, chunk_size: int = 2048) -> tuple[list[dict[str, Any]], float]:
    """Per row of ``embeds``: norm, vocabulary neighbours (cosine, L2) and, with ``index``, contexts.

    Returns:
        The rows (JSON-ready) and the median norm of the vocabulary rows.
    """
    near = vocab_neighbours(embeds, model, tokenizer, n=top_n, chunk_size=chunk_size)
    rows = _neighbour_rows(near)
    if index is not None and len(rows):
        for row, matches in zip(rows, contextual_neighbours(model, index, embeds, prefix_ids, index_top_n),
                                strict=True):
            row["contexts"] = _contexts(matches)
    return rows, near.vocab_norm


def _chat_ids(tokenizer: PreTrainedTokenizerBase, question: str, system_prompt: str | None) -> list[int]:
    """The ids a Soft Thinking run fed before the first concept token (chat template, generation prompt)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _summary(rows: list[dict[str, Any]], vocab_norm: float) -> dict[str, Any]:
    if not rows:
        return {"rows": 0}
    cos = [r["cosine"][0]["score"] for r in rows]
    norms = [r["norm"] for r in rows]
    return {"rows": len(rows), "nearest_cosine_mean": round(sum(cos) / len(cos), 4),
            "nearest_cosine_min": round(min(cos), 4), "nearest_cosine_max": round(max(cos), 4),
            "norm_mean": round(sum(norms) / len(norms), 4), "vocab_norm_median": round(vocab_norm, 4),
            "cosine_and_l2_agree": sum(r["cosine"][0]["id"] == r["l2"][0]["id"] for r in rows)}


# ------------------------------------------------------------------------------------------------- table
def _tok(token: str) -> str:
    from rich.markup import escape

    return escape(repr(token))


def _table(title: str, rows: list[dict[str, Any]], first: tuple[str, list[str]], show: int = 3):  # noqa: ANN202
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column(first[0], justify="right")
    extra = first[1] and len(first[1]) == len(rows)
    if extra:
        table.add_column("top-1 component (w)")
    table.add_column("nearest by cosine")
    table.add_column("cos", justify="right")
    table.add_column("next by cosine")
    table.add_column("nearest by L2")
    table.add_column("dist", justify="right")
    table.add_column("norm", justify="right")
    has_contexts = any("contexts" in r for r in rows)
    if has_contexts:
        table.add_column("nearest context (layer, cos)")
    for i, row in enumerate(rows):
        best, l2 = row["cosine"][0], row["l2"][0]
        cells = [str(row.get("position", row.get("step", i)))]
        if extra:
            cells.append(first[1][i])
        cells += [_tok(best["token"]), f"{best['score']:.3f}",
                  " ".join(f"{_tok(c['token'])} {c['score']:.2f}" for c in row["cosine"][1:show]),
                  _tok(l2["token"]), f"{l2['score']:.3f}", f"{row['norm']:.3f}"]
        if has_contexts:
            ctx = row.get("contexts") or []
            cells.append(f"{_tok(ctx[0]['context'][-60:])} ({ctx[0]['layer']}, {ctx[0]['cosine']:.3f})" if ctx
                         else "")
        table.add_row(*cells)
    return table


# ---------------------------------------------------------------------------------------------- command
def describe(
    prompt: str | None = None,
    predictions: str | None = None,
    model: str | None = None,
    dtype: str = "float32",
    top_n: int = 5,
    records: int = 1,
    max_steps: int | None = 32,
    index: str | None = None,
    index_top_n: int = 3,
    output: str | None = None,
    check_base_model: bool = True,
    chunk_size: int = 2048,
    quiet: bool = False,
) -> dict[str, Any]:
    """Describe a soft prompt or a predictions file's concept tokens: print a table, write JSON.

    Args:
        prompt: A prompt-tuning prompt: PEFT adapter folder (``adapter_config.json`` +
            ``adapter_model.safetensors``) or a softtok Lightning ``.ckpt``.
        predictions: A Soft Thinking predictions JSONL written with ``keep_trace`` and
            ``generation.return_topk`` (records with ``topk_ids`` / ``topk_weights``).
        model: Model name or folder; default: the one recorded with the prompt (PEFT
            ``base_model_name_or_path``) or in ``<predictions>.settings.json``, else ``smollm2-135m``.
        dtype: Model weight dtype.
        top_n: Vocabulary neighbours per soft token (by cosine and by L2).
        records: Predictions: how many records to read (the file's first ones).
        max_steps: Predictions: concept tokens per record (``None``: all).
        index: A context index directory (:class:`~softtok.interpret.index.ContextIndex`)
            for contextual neighbours, or ``None`` to skip them.
        index_top_n: Contexts per soft token.
        output: The JSON file to write; default ``<prompt or predictions>.describe.json``.
        check_base_model: Refuse a prompt recorded for another base model.
        chunk_size: Rows per block of scores in the vocabulary search.
        quiet: Print no table.

    Returns:
        The report written to ``output``.

    Raises:
        ValueError: Both or neither of ``prompt`` / ``predictions``; a setting out of range;
            a prompt or predictions file of another model; records without the mixtures.
    """
    from rich.console import Console

    from softtok.callbacks import write_atomic
    from softtok.models import DEFAULT_MODEL, load_model, model_fingerprint, resolve_dtype

    if (prompt is None) == (predictions is None):
        raise ValueError(f"give exactly one of prompt (a soft prompt) and predictions (a JSONL file); got "
                         f"prompt={prompt!r}, predictions={predictions!r}")
    for name, value in (("top_n", top_n), ("records", records), ("index_top_n", index_top_n),
                        ("max_steps", 1 if max_steps is None else max_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    resolve_dtype(dtype)
    source = Path(prompt if prompt is not None else predictions)
    out = Path(output) if output else source.with_name(source.name.rstrip("/") + ".describe.json")
    settings = None
    if predictions is not None:  # everything that needs no model is checked first
        lines, settings = read_predictions(predictions)
        recorded = ((settings or {}).get("model") or {}).get("model") or {}
        name = model or recorded.get("name") or DEFAULT_MODEL
        if recorded and recorded != model_fingerprint(name):
            raise ValueError(f"{str(predictions)!r} was made with model {recorded} but model={name!r} is "
                             f"{model_fingerprint(name)}; pass the model the predictions were made with")
    else:
        name = model or prompt_base_model(prompt) or DEFAULT_MODEL
    context_index = ContextIndex.load(index) if index else None
    lm, tokenizer = load_model(name, dtype=dtype)
    if context_index is not None:
        context_index.check(lm)  # before any forward
    report: dict[str, Any] = {"kind": "soft_prompt" if prompt is not None else "predictions", "source": str(source),
                              "model": name, "model_identity": model_identity(lm), "top_n": top_n,
                              "index": str(index) if index else None,
                              "index_layers": context_index.layers if context_index else None}
    console = Console()
    if not console.is_terminal:  # a file or a pipe: wide enough that cells do not wrap
        console.width = max(console.width, 160)
    if prompt is not None:
        embeds = load_prompt_embeddings(prompt, lm, check_base_model)
        rows, vocab_norm = read_embeddings(lm, tokenizer, embeds, top_n, context_index, None, index_top_n, chunk_size)
        for position, row in enumerate(rows):
            row["position"] = position
        report.update(rows=rows, summary=_summary(rows, vocab_norm))
        tables = [_table(f"{source}: {len(rows)} virtual tokens, nearest vocabulary rows "
                         f"(median vocabulary norm {vocab_norm:.3f})", rows, ("pos", []))]
    else:
        system_prompt = ((settings or {}).get("model") or {}).get("system_prompt")
        report["system_prompt"] = system_prompt
        report["records"], tables, all_rows = [], [], []
        for record in lines[:records]:
            embeds, soft = concept_embeddings(lm, record)
            steps = len(embeds) if max_steps is None else min(max_steps, len(embeds))
            embeds, soft = embeds[:steps], SoftToken(soft.ids[:steps], soft.weights[:steps])
            prefix = _chat_ids(tokenizer, record["question"], system_prompt) if context_index is not None else None
            rows, vocab_norm = read_embeddings(lm, tokenizer, embeds, top_n, context_index, prefix, index_top_n,
                                               chunk_size)
            top1 = []
            latent = record.get("latent")  # SwiReasoning with keep_trace: which steps were fed the latent mixture
            for step, row in enumerate(rows):
                totals: dict[int, float] = {}  # a token drawn twice (multiplex) carries the sum of its weights
                for i, w in zip(soft.ids[step].tolist(), soft.weights[step].tolist(), strict=True):
                    totals[i] = totals.get(i, 0.0) + w
                ids, weights = list(totals), list(totals.values())
                strings = token_strings(tokenizer, ids)
                row["step"] = step
                row["components"] = [{"id": i, "token": s, "weight": round(w, 6)}
                                     for i, s, w in zip(ids, strings, weights, strict=True) if w > 0]
                head = max(range(len(ids)), key=lambda k: weights[k])
                row["nearest_is_top1"] = {"cosine": row["cosine"][0]["id"] == ids[head],
                                          "l2": row["l2"][0]["id"] == ids[head]}
                label = f"{_tok(strings[head])} {weights[head]:.2f}"
                if latent is not None and step < len(latent):
                    row["latent"] = bool(latent[step])
                    label += " latent" if latent[step] else " explicit"
                top1.append(label)
            all_rows += rows
            summary = _summary(rows, vocab_norm)
            summary["nearest_is_top1"] = {m: sum(r["nearest_is_top1"][m] for r in rows) for m in ("cosine", "l2")}
            report["records"].append({"index": record.get("index"), "sample": record.get("sample", 0),
                                      "question": record.get("question"), "steps": rows, "summary": summary})
            tables.append(_table(f"record {record.get('index')} (sample {record.get('sample', 0)}): "
                                 f"{record.get('question')!r}, {len(rows)} concept tokens; nearest is the top-1 "
                                 f"component: {summary['nearest_is_top1']['cosine']}/{len(rows)} by cosine, "
                                 f"{summary['nearest_is_top1']['l2']}/{len(rows)} by L2", rows, ("step", top1)))
        report["summary"] = {"records": len(report["records"]), "steps": len(all_rows),
                             "nearest_is_top1": {m: sum(r["nearest_is_top1"][m] for r in all_rows)
                                                 for m in ("cosine", "l2")}}
    if not quiet:
        for table in tables:
            console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    if not quiet:
        console.print(f"wrote {out}")
    return report


def build_parser():  # noqa: ANN201 - a jsonargparse.ArgumentParser
    """The ``softtok describe`` parser: :func:`describe`'s arguments, plus ``-c/--config`` YAML files."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="softtok describe", description=__doc__.split("\n")[0], exit_on_error=True)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML of these options (configs/interpret/)")
    parser.add_function_arguments(describe, skip={"quiet"})
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``softtok describe [-c CONFIG] [--prompt PATH | --predictions PATH] [options]``; errors exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[2:] if argv is None else argv)
    options = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        return describe(**options)
    except (ValueError, FileNotFoundError) as err:
        print(f"softtok describe: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main(sys.argv[1:])
