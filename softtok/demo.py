"""``make demo``: Soft Thinking on the embedded SmolLM2-135M-Instruct, shown as a table.

Runs the ``configs/soft_thinking/soft.yaml`` recipe (any recipe with ``--config``) on a
few reasoning-gym problems and prints, per problem, the question, the first concept
tokens (top-1 text with the runner-up components and their weights), the answer, whether
it is correct and how many thinking tokens it took; then the accuracy.

    python -m softtok.demo [--config configs/soft_thinking/gumbel.yaml] [--problems 16]
"""

from __future__ import annotations

import argparse
import os
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm import tqdm

from softtok.cli import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RECIPE = os.path.join(ROOT, "configs", "soft_thinking", "soft.yaml")


def trace(tokenizer, record: dict, steps: int = 3, runners_up: int = 2) -> str:
    """``top1 [alt w, alt w]`` for the first ``steps`` concept tokens."""
    parts = []
    for ids, weights in list(zip(record["topk_ids"], record["topk_weights"], strict=True))[:steps]:
        shown = [f"{tokenizer.decode([i])!r} {w:.2f}" for i, w in zip(ids, weights, strict=True) if w > 0]
        parts.append(f"{shown[0]} [{', '.join(shown[1:1 + runners_up])}]")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_RECIPE, help="a configs/soft_thinking recipe")
    parser.add_argument("--problems", type=int, default=16, help="number of problems (>= 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="problems generated together")
    opts = parser.parse_args(argv)
    if opts.problems < 1:
        parser.error(f"--problems={opts.problems} must be >= 1")

    console = Console(width=160)
    console.print(f"Loading the recipe {os.path.relpath(opts.config)} ...")
    run = cli(["-c", opts.config, "--data.init_args.size", str(opts.problems),
               "--data.init_args.batch_size", str(opts.batch_size), "--model.init_args.keep_trace", "true",
               "--model.init_args.generation.return_topk", "true", "--trainer.callbacks", "null"], run=False)
    module, data = run.model, run.datamodule
    data.setup("predict")
    cfg = module.generation
    console.print(f"model {module.lm.config._name_or_path or 'smollm2-135m'} | mode {cfg.mode} | "
                  f"T {cfg.temperature} | max_topk {cfg.max_topk} | think_end {cfg.think_end!r}")

    records, start = [], time.perf_counter()
    with tqdm(total=len(data.records), desc="soft thinking", unit="problem") as bar:
        for batch in data.predict_dataloader():
            records += module.run(batch)
            bar.update(len(batch))
    elapsed = time.perf_counter() - start

    table = Table(title=f"Soft Thinking ({cfg.mode}) on {len(records)} {records[0]['task']} problems",
                  show_lines=True)
    for column in ("#", "question", "concept tokens (top-1 [runner-ups])", "answer", "ref", "ok", "think"):
        table.add_column(escape(column), overflow="fold")
    for r in records:
        question = r["question"].replace("State the final answer to the following arithmetic problem: ", "")
        table.add_row(str(r["index"]), escape(question), escape(trace(module.tokenizer, r)), str(r["prediction"]),
                      r["reference"], "yes" if r["correct"] else "no", f"{r['think_tokens']} ({r['think_end']})")
    console.print(table)
    correct = sum(r["correct"] for r in records)
    tokens = sum(r["think_tokens"] + r["answer_tokens"] for r in records)
    console.print(f"accuracy {correct}/{len(records)} = {correct / len(records):.1%} | "
                  f"{tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.1f} tok/s)")


if __name__ == "__main__":
    main()
