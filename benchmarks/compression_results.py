"""Train a CompLLM-style compressor on SmolLM2 and compare answer accuracy side by side on the same test questions.

One run = one compression ratio: train the compressor (LoRA + head) by answer-token
distillation (:func:`softtok.compression.distillation_loss`) for ``--steps`` steps, then
answer the same ``--test-size`` long-context questions
(:class:`~softtok.data.long_context.LongContextQADataModule`, scored by
:func:`~softtok.data.long_context.answer_correct`) greedily under each condition:

* ``full``: the whole context (the teacher);
* ``compressed``: the trained compressor's concept embeddings in place of the context;
* ``mean_pool``: the untrained compressor (zero head: each CE is the mean of ``ratio``
  token embeddings), the ablation;
* ``truncated``: the context cut to as many tokens as the compressed context has positions,
  **keeping its end** (the part nearest the question);
* ``no_context``: the context removed (the floor: what the model guesses).

Accuracy comes with a Wilson 95% interval; TTFT (median prefill time at batch 1 over
``--timing-questions`` questions, compression included: a cold cache) and KV-cache bytes
(mean at batch 1) per condition. Writes ``<out>/ratio<r>.json``; ``--report`` turns the
JSON files of a folder into Markdown tables.

Usage::

    python benchmarks/compression_results.py --ratio 2 --out outputs/compression/results
    python benchmarks/compression_results.py --ratio 4 --out outputs/compression/results
    python benchmarks/compression_results.py --report outputs/compression/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from softtok.compression import CompressionConfig, SegmentCompressor, compressed_length, distillation_loss
from softtok.compression.prefill import truncate_context
from softtok.data.long_context import LongContextQADataModule, answer_correct
from softtok.generation.cache import kv_bytes
from softtok.generation.prefill import plain_prefill, prefill_logits
from softtok.metrics import wilson_interval
from softtok.prompts.generate import eos_ids, greedy_generate

CONDITIONS = ("full", "compressed", "mean_pool", "truncated", "no_context")


def condition_inputs(name: str, batch: dict[str, Any], ratio: int, segment_len: int, pad: int,
                     compressors: dict[str, SegmentCompressor]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``(prompt_ids, prompt_mask, prefill builder)`` of one condition for a left-padded prompt batch."""
    ids, mask, ctx = batch["prompt_ids"], batch["prompt_mask"], batch["prompt_context_mask"]
    if name == "full":
        return ids, mask, plain_prefill
    if name in ("compressed", "mean_pool"):
        return ids, mask, compressors[name].prefill(ctx)
    lengths = ctx.sum(1).tolist()
    config = CompressionConfig(segment_len=segment_len, ratio=ratio)
    keep = [compressed_length(n, config) for n in lengths] if name == "truncated" else [0] * len(lengths)
    new_ids, new_mask, _ = truncate_context(ids, mask, ctx, keep, side="end", pad_token_id=pad)
    return new_ids, new_mask, plain_prefill


def run(args: argparse.Namespace) -> dict[str, Any]:
    from softtok.models import load_model

    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model, device=args.device)
    data = LongContextQADataModule(tokenizer=tokenizer, train_size=args.steps * args.batch_size,
                                   val_size=0, test_size=args.test_size, seed=args.seed, n_people=args.n_people,
                                   distractors=args.distractors, batch_size=args.batch_size,
                                   eval_batch_size=args.eval_batch_size)
    data.setup()
    config = CompressionConfig(segment_len=args.segment_len, ratio=args.ratio)
    trained = SegmentCompressor(config, model)
    mean_pool = SegmentCompressor(config, model).eval()
    device = torch.device(args.device)

    def to_device(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ train
    optimizer = torch.optim.AdamW(trained.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup))
    losses, start = [], time.perf_counter()
    trained.train()
    for step, batch in enumerate(data.train_dataloader()):
        if step >= args.steps:
            break
        loss = distillation_loss(trained, model, to_device(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    train_s = time.perf_counter() - start
    trained.eval()
    if args.save:
        trained.save(Path(args.out) / f"compressor_ratio{args.ratio}")

    # --------------------------------------------------------------- evaluate
    eos = eos_ids(model, tokenizer)
    compressors = {"compressed": trained, "mean_pool": mean_pool}
    pad = tokenizer.pad_token_id
    results: dict[str, Any] = {}
    test_batches = [to_device(b) for b in data.test_dataloader()]
    with torch.no_grad():
        # Distillation loss of the test set for the trained and the untrained compressor.
        test_loss = {name: statistics.fmean(distillation_loss(c, model, b).item() for b in test_batches)
                     for name, c in compressors.items()}
        for name in CONDITIONS:
            correct, positions = [], []
            for batch in test_batches:
                ids, mask, builder = condition_inputs(name, batch, args.ratio, args.segment_len, pad, compressors)
                out = greedy_generate(model, ids, mask, prefill=builder, max_new_tokens=args.max_new_tokens,
                                      eos_token_ids=eos)
                texts = tokenizer.batch_decode(out, skip_special_tokens=True)
                correct += [answer_correct(t, r["answer"]) for t, r in zip(texts, batch["records"], strict=True)]
                positions += (builder.last.lengths if hasattr(builder, "last") and builder.last is not None
                              else mask.sum(1).tolist())
            times, kvs = [], []
            for batch in test_batches[:1]:
                for i in range(min(args.timing_questions, batch["prompt_ids"].shape[0])):
                    row = {k: v[i:i + 1] if isinstance(v, torch.Tensor) else v[i:i + 1] for k, v in batch.items()}
                    ids, mask, builder = condition_inputs(name, row, args.ratio, args.segment_len, pad, compressors)
                    ids, mask = ids[:, (mask[0] == 0).sum():], mask[:, (mask[0] == 0).sum():]  # no padding at batch 1
                    if hasattr(builder, "context_mask"):
                        builder.context_mask = builder.context_mask[:, -ids.shape[1]:]
                    for rep in range(args.timing_repeats + 1):
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        t0 = time.perf_counter()
                        pre = builder(model, ids, mask)
                        prefill_logits(model, pre)
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        if rep:  # the first run is a warm-up
                            times.append(time.perf_counter() - t0)
                    kvs.append(kv_bytes(pre.cache))
            n, k = len(correct), sum(correct)
            low, high = wilson_interval(k, n)
            results[name] = {"accuracy": k / n, "correct": k, "n": n, "wilson95": [low, high],
                             "mean_positions": statistics.fmean(positions), "ttft_s": statistics.median(times),
                             "kv_bytes": statistics.fmean(kvs)}
            print(f"{name:11s} acc {k / n:.3f} [{low:.3f}, {high:.3f}] positions {statistics.fmean(positions):.0f} "
                  f"ttft {statistics.median(times) * 1000:.1f} ms kv {statistics.fmean(kvs) / 2**20:.2f} MiB",
                  file=sys.stderr)
    context_tokens = [int(n) for b in test_batches for n in b["prompt_context_mask"].sum(1)]
    out = {"model": args.model, "ratio": args.ratio, "segment_len": args.segment_len, "steps": args.steps,
           "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "n_people": args.n_people,
           "distractors": args.distractors, "test_size": args.test_size, "device": args.device,
           "threads": torch.get_num_threads(), "train_seconds": train_s, "train_loss_first10": losses[:10],
           "train_loss_last10": losses[-10:], "test_kl": test_loss,
           "mean_context_tokens": statistics.fmean(context_tokens), "compressor_parameters": trained.num_parameters(),
           "truncation": "keep the end of the context (nearest the question), as many tokens as the compressed "
                         "context has concept embeddings", "conditions": results}
    path = Path(args.out) / f"ratio{args.ratio}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return out


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Full vs truncated (to the 2x positions) vs no-context accuracy of the base model per task difficulty.

    Run on ``--seed`` (use one other than the results runs' test split) to pick ``n_people`` /
    ``distractors`` where the full context clearly beats truncation; writes ``<out>/sweep.json``.
    """
    from softtok.models import load_model

    model, tokenizer = load_model(args.model, device=args.device)
    eos, device = eos_ids(model, tokenizer), torch.device(args.device)
    rows = []
    for setting in args.sweep:
        n_people, distractors = (int(x) for x in setting.split(","))
        data = LongContextQADataModule(tokenizer=tokenizer, train_size=0, val_size=0, test_size=args.test_size,
                                       seed=args.seed, n_people=n_people, distractors=distractors,
                                       eval_batch_size=args.eval_batch_size)
        data.setup()
        row: dict[str, Any] = {"n_people": n_people, "distractors": distractors}
        tokens = []
        with torch.no_grad():
            for name in ("full", "truncated", "no_context"):
                correct = []
                for batch in data.test_dataloader():
                    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    tokens += batch["prompt_context_mask"].sum(1).tolist() if name == "full" else []
                    ids, mask, builder = condition_inputs(name, batch, 2, args.segment_len, tokenizer.pad_token_id, {})
                    out = greedy_generate(model, ids, mask, prefill=builder, max_new_tokens=args.max_new_tokens,
                                          eos_token_ids=eos)
                    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
                    correct += [answer_correct(t, r["answer"]) for t, r in zip(texts, batch["records"], strict=True)]
                row[name] = sum(correct) / len(correct)
        row["mean_context_tokens"] = statistics.fmean(tokens)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    out = {"model": args.model, "seed": args.seed, "questions": args.test_size, "truncation": "2x, keep the end",
           "settings": rows}
    path = Path(args.out) / "sweep.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def report(folder: str) -> str:
    """Markdown tables of every ``ratio*.json`` in ``folder``."""
    lines = []
    for path in sorted(Path(folder).glob("ratio*.json")):
        r = json.loads(path.read_text())
        full = r["conditions"]["full"]
        lines += [f"### Ratio {r['ratio']}x ({r['model']}, {r['steps']} steps x batch {r['batch_size']}, "
                  f"lr {r['lr']}, {r['train_seconds'] / 60:.1f} min training on {r['device']} with {r['threads']} "
                  "threads)", "",
                  f"{r['test_size']} test questions, mean context {r['mean_context_tokens']:.0f} tokens; "
                  f"test KL (nats / answer token): trained {r['test_kl']['compressed']:.3f}, "
                  f"mean pooling {r['test_kl']['mean_pool']:.3f}.", "",
                  "| condition | accuracy | Wilson 95% | mean prompt positions | TTFT (ms, batch 1) | TTFT full / this "
                  "| KV cache (MiB) | KV this / full |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in CONDITIONS:
            c = r["conditions"][name]
            lo, hi = c["wilson95"]
            lines.append(f"| {name} | {c['accuracy']:.3f} ({c['correct']}/{c['n']}) | [{lo:.3f}, {hi:.3f}] | "
                         f"{c['mean_positions']:.0f} | {c['ttft_s'] * 1000:.1f} | {full['ttft_s'] / c['ttft_s']:.2f} | "
                         f"{c['kv_bytes'] / 2**20:.2f} | {c['kv_bytes'] / full['kv_bytes']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", default=None, help="print Markdown tables of the JSON files in this folder")
    parser.add_argument("--model", default="smollm2-135m", help="softtok model name, folder or hub id")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--ratio", type=int, default=2, help="compression ratio")
    parser.add_argument("--segment-len", type=int, default=20, help="segment length")
    parser.add_argument("--steps", type=int, default=150, help="training steps")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="evaluation batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--warmup", type=int, default=10, help="linear warm-up steps")
    parser.add_argument("--seed", type=int, default=0, help="data and init seed")
    parser.add_argument("--n-people", type=int, default=3, help="people per context")
    parser.add_argument("--distractors", type=int, default=16, help="distractor sentences per context")
    parser.add_argument("--test-size", type=int, default=200, help="test questions")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="answer budget")
    parser.add_argument("--timing-questions", type=int, default=8, help="questions timed at batch 1")
    parser.add_argument("--timing-repeats", type=int, default=3, help="timed runs per question")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--save", action="store_true", help="save the trained compressor under --out")
    parser.add_argument("--out", default="outputs/compression/results", help="output folder")
    parser.add_argument("--sweep", nargs="+", default=None, metavar="PEOPLE,DISTRACTORS",
                        help="only measure the base model's full / truncated / no-context accuracy per setting")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep:
        sweep(args)
        return
    run(args)


if __name__ == "__main__":
    main()
