"""Soft prompts on SmolLM2-135M-Instruct under a fixed CPU budget: zero-shot vs trained prompts.

Every method sees the same training batches (same order), the same step budget, AdamW,
and is scored on the same held-out reasoning-gym test split with the same greedy
decoding and answer check (``extract_answer`` + the task's scorer). By default the
prompts learn to write worked solutions (``--target solution``: chain_sum's partial sums,
then ``Final answer: N``); ``--target answer`` trains on the bare answer instead.

* ``zero_shot``: the base model with the same chat (system prompt + question) and decoding;
* ``zero_shot_other``: the base model with other system prompts (``OTHER_SYSTEM_PROMPTS``)
  and 128 new tokens, the best of them reported: a zero-shot baseline not handicapped by
  the chat chosen for the prompts;
* ``prompt_tuning`` / ``prefix_tuning`` / ``iapt``: softtok's prompts (:mod:`softtok.prompts`);
* ``peft_prompt_tuning``: PEFT ``PromptTuning``, initialised with the same embeddings as
  softtok's prompt tuning, trained by the same loop on the same batches; saved with
  ``save_pretrained``, imported with :func:`softtok.prompts.load_peft_adapter` (identical
  logits) and decoded by the same greedy loop as every other row. (PEFT 0.21.2's own
  ``generate`` under transformers 5.24 departs from PEFT's own forward pass after the first
  generated token -- see ``tests/test_prompt_peft.py`` -- so it cannot be the decoder here;
  ``--peft-generate`` scores it anyway, bucketing prompts by length so PEFT sees no padding.)

The trained prompt-tuning and prefix-tuning prompts are saved as PEFT adapters under
``<out>/prompts/<method>/``, so ``softtok describe --prompt <out>/prompts/prompt_tuning``
can read them (see ``docs/interpret.md``).

Usage (each method writes ``<out>/<method>.json``; ``--report`` combines them)::

    nice -n 10 python benchmarks/soft_prompt_results.py --methods zero_shot zero_shot_other prompt_tuning
    nice -n 10 python benchmarks/soft_prompt_results.py --methods prefix_tuning iapt peft_prompt_tuning
    python benchmarks/soft_prompt_results.py --report   # table (Markdown) + loss curves (PNG)
"""

from __future__ import annotations

import argparse
import json
import re
import time
import warnings
from pathlib import Path

import torch

from softtok.answers import extract_answer
from softtok.data.instruct import InstructDataModule
from softtok.generation.prefill import plain_prefill
from softtok.metrics import wilson_interval
from softtok.prompts import (
    IAPTConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    export_peft,
    greedy_generate,
    load_peft_adapter,
    mark_only_prompt_trainable,
)
from softtok.prompts.generate import eos_ids

METHODS = ("zero_shot", "zero_shot_other", "prompt_tuning", "prefix_tuning", "iapt", "peft_prompt_tuning")
SYSTEM_PROMPT = "Compute step by step, then give the final answer."
#: Other chats tried zero-shot (``None``: the template's default system message); the best one is the row.
OTHER_SYSTEM_PROMPTS = ("Give only the final number.", None)
CONFIGS = {  # method -> (prompt config, learning rate)
    "prompt_tuning": (PromptTuningConfig(n_virtual=20, init_text=SYSTEM_PROMPT), 0.03),
    "peft_prompt_tuning": (PromptTuningConfig(n_virtual=20, init_text=SYSTEM_PROMPT), 0.03),
    "prefix_tuning": (PrefixTuningConfig(n_virtual=10, init_text="Compute step by step."), 0.01),
    "iapt": (IAPTConfig(n_virtual=4, init_text="Compute step by step.", bottleneck=16), 0.003),
}
LABELS = {"zero_shot": "zero-shot", "zero_shot_other": "zero-shot, best other system prompt",
          "prompt_tuning": "softtok prompt tuning", "prefix_tuning": "softtok prefix tuning",
          "iapt": "softtok IAPT (deep)", "peft_prompt_tuning": "PEFT PromptTuning"}


def data(args: argparse.Namespace, system_prompt: str | None) -> InstructDataModule:
    dm = InstructDataModule(
        tokenizer="smollm2-135m", task=args.task, task_config=json.loads(args.task_config),
        train_size=args.steps * args.batch, val_size=0, test_size=args.test_size, seed=args.seed,
        system_prompt=system_prompt, target=args.target, batch_size=args.batch, eval_batch_size=args.eval_batch,
    )
    dm.setup("fit")
    return dm


def train_batches(dm: InstructDataModule, steps: int) -> list[dict]:
    """The fixed sequence of training batches every method sees (one epoch, seeded shuffle)."""
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    return list(loader)[:steps]


def score(dm: InstructDataModule, texts: list[str], records: list[dict]) -> list[bool]:
    return [dm.score(r, extract_answer(t), "test") for t, r in zip(texts, records, strict=True)]


def evaluate_softtok(model, tok, dm, prefill, max_new_tokens) -> tuple[list[str], list[bool]]:  # noqa: ANN001
    texts, records = [], []
    eos = eos_ids(model, tok)
    for batch in dm.test_dataloader():
        out = greedy_generate(model, batch["prompt_ids"], batch["prompt_mask"], prefill=prefill,
                              max_new_tokens=max_new_tokens, eos_token_ids=eos)
        texts += tok.batch_decode(out, skip_special_tokens=True)
        records += batch["records"]
    return texts, score(dm, texts, records)


def evaluate_peft(peft_model, tok, dm, max_new_tokens) -> tuple[list[str], list[bool]]:  # noqa: ANN001
    """PEFT's own greedy ``generate``, prompts grouped by length (no padding anywhere)."""
    items = [dm.encode(r) for r in dm.records["test"]]
    texts: list[str | None] = [None] * len(items)
    by_length: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_length.setdefault(len(it["prompt"]), []).append(i)
    for idx in by_length.values():
        for start in range(0, len(idx), dm.eval_batch_size):
            chunk = idx[start:start + dm.eval_batch_size]
            ids = torch.tensor([items[i]["prompt"] for i in chunk])
            with torch.no_grad():
                out = peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=max_new_tokens, eos_token_id=list(eos_ids(peft_model, tok)),
                                          pad_token_id=tok.pad_token_id)
            for i, row in zip(chunk, out[:, ids.shape[1]:].tolist(), strict=True):
                texts[i] = tok.decode(row, skip_special_tokens=True)
    return texts, score(dm, texts, dm.records["test"])


def run_method(method: str, args: argparse.Namespace) -> dict:
    import peft

    from softtok.models import load_model

    torch.manual_seed(args.seed)
    model, tok = load_model(args.model)
    dm = data(args, args.system_prompt)
    result: dict = {"method": method, "label": LABELS[method], "losses": [], "params": 0}
    start = time.time()
    if method == "zero_shot":
        texts, correct = evaluate_softtok(model, tok, dm, plain_prefill, args.max_new_tokens)
    elif method == "zero_shot_other":
        # Free-form chats need room: 128 new tokens, and the best of the chats is reported.
        result["variants"], best = [], None
        for system_prompt in OTHER_SYSTEM_PROMPTS:  # the test records are the same, only the chat differs
            variant = evaluate_softtok(model, tok, data(args, system_prompt), plain_prefill,
                                       max(args.max_new_tokens, 128))
            result["variants"].append({"system_prompt": system_prompt, "correct": sum(variant[1])})
            if best is None or sum(variant[1]) > sum(best[1]):
                best, result["label"] = variant, f"zero-shot, system prompt {system_prompt!r}, 128 new tokens"
        texts, correct = best
    else:
        config, lr = CONFIGS[method]
        lr = args.lr or lr
        prompt = config.build(model, tok)
        mark_only_prompt_trainable(model, prompt)
        result.update(params=prompt.num_parameters(), lr=lr, config=config.to_dict())
        if method == "peft_prompt_tuning":
            runner = peft.get_peft_model(model, peft.PromptTuningConfig(
                task_type="CAUSAL_LM", num_virtual_tokens=config.n_virtual)).eval()
            weight = runner.prompt_encoder["default"].embedding.weight
            with torch.no_grad():
                weight.copy_(prompt.prompt_embeddings)  # the same init as softtok's prompt tuning
            params = [weight]

            def loss_fn(b: dict) -> torch.Tensor:
                return runner(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        else:
            params = list(prompt.parameters())

            def loss_fn(b: dict) -> torch.Tensor:
                return prompt.loss(model, b["input_ids"], b["attention_mask"], b["labels"])
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        warmup = args.warmup
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
        private = None
        if args.dp_epsilon is not None:  # DP-SGD (Opacus): per-example clipping + noise, epsilon tracked
            if method != "prompt_tuning":
                raise ValueError("--dp-epsilon applies to --methods prompt_tuning")
            from softtok.prompts.private import DPConfig, DPPromptOptimizer

            private = DPPromptOptimizer(params, optimizer, DPConfig(target_epsilon=args.dp_epsilon,
                                                                    max_grad_norm=args.dp_clip),
                                        args.batch, len(dm.records["train"]), args.steps)
            result.update(dp={"target_epsilon": args.dp_epsilon, "delta": private.delta, "clip": args.dp_clip,
                              "noise_multiplier": private.noise_multiplier})
        for step, batch in enumerate(train_batches(dm, args.steps)):
            if private is not None:
                def example_loss(i: int, b: dict = batch) -> torch.Tensor:
                    return loss_fn({k: b[k][i:i + 1] for k in ("input_ids", "attention_mask", "labels")})
                loss = torch.tensor(private.step(example_loss, batch["input_ids"].shape[0]))
            else:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(batch)
                loss.backward()
                optimizer.step()
            scheduler.step()
            result["losses"].append(loss.item())
            if step % 10 == 0:
                print(f"{method} step {step} loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
        result["train_s"] = time.time() - start
        if private is not None:
            result["dp"]["epsilon"] = private.epsilon()
        if method in ("prompt_tuning", "prefix_tuning"):  # keep the trained prompt (PEFT format) for reading it
            folder = export_peft(prompt, Path(args.out) / "prompts" / method, base_model_name_or_path=args.model,
                                 overwrite=True)
            result["prompt_dir"] = str(folder)
        eval_start = time.time()
        with torch.no_grad():
            if method == "peft_prompt_tuning" and args.peft_generate:
                texts, correct = evaluate_peft(runner, tok, dm, args.max_new_tokens)
            elif method == "peft_prompt_tuning":
                folder = Path(args.out) / "peft_adapter"
                runner.save_pretrained(str(folder))
                imported = load_peft_adapter(folder, model)
                texts, correct = evaluate_softtok(model, tok, dm, imported, args.max_new_tokens)
            else:
                texts, correct = evaluate_softtok(model, tok, dm, prompt, args.max_new_tokens)
        result["eval_s"] = time.time() - eval_start
    n, k = len(correct), sum(correct)
    result.update(
        n_test=n, correct=k, accuracy=k / n, ci95=[round(x, 4) for x in wilson_interval(k, n)],
        total_s=time.time() - start,
        examples=[{"question": r["question"], "answer": r["answer"], "output": t}
                  for r, t in zip(dm.records["test"][:8], texts[:8], strict=True)],
        outputs=texts, correct_ids=[i for i, ok in enumerate(correct) if ok],
        settings={k: v for k, v in vars(args).items() if k not in ("methods", "report", "compare", "errors")},
    )
    return result


def report(out: Path, plot: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {m: json.loads((out / f"{m}.json").read_text()) for m in METHODS if (out / f"{m}.json").is_file()}
    lines = ["| method | trained parameters | lr | test exact match | 95% CI | train time (s) |",
             "|---|---:|---:|---:|---|---:|"]
    for r in results.values():
        lo, hi = r["ci95"]
        label = r["label"] + "".join(  # zero_shot_other: every chat tried, with its score
            f" [{v['system_prompt']!r}: {v['correct']}/{r['n_test']}]" for v in r.get("variants", []))
        lines.append(f"| {label} | {r['params']:,} | {r.get('lr', '-')} | {r['correct']}/{r['n_test']} = "
                     f"{100 * r['accuracy']:.1f}% | {100 * lo:.1f}-{100 * hi:.1f}% | {r.get('train_s', 0):.0f} |")
    table = "\n".join(lines)
    print(table)
    if not plot.name:
        return table
    fig, ax = plt.subplots(figsize=(7, 4))
    # softtok and PEFT prompt tuning coincide: a wide solid line under a dashed one keeps both visible.
    styles = {"prompt_tuning": {"linewidth": 4, "alpha": 0.5}, "peft_prompt_tuning": {"linestyle": "--"}}
    for method, r in results.items():
        if r["losses"]:
            losses = torch.tensor(r["losses"])
            smooth = torch.nn.functional.avg_pool1d(losses[None, None], 5, 1, 2, count_include_pad=False)[0, 0]
            ax.plot(smooth.tolist(), label=r["label"], **styles.get(method, {}))
    ax.set_xlabel("optimiser step (batch 8)")
    ax.set_ylabel("target-token loss (5-step mean)")
    ax.set_yscale("log")
    ax.set_title("Soft prompts on SmolLM2-135M-Instruct, chain_sum (CPU)")
    ax.legend()
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=120)
    return table


STEP_LINE = re.compile(r"^\s*(-?\d+) ([+-]) (-?\d+) = (-?\d+)\s*$")
ERROR_KINDS = ("right", "format", "copy", "arithmetic")


def first_error(expression: str, output: str) -> str:
    """Where a worked chain_sum solution first goes wrong.

    ``format``: not one ``a op b = c`` line per operation; ``copy``: a line's operands or
    operator differ from the question (or from the previous partial sum); ``arithmetic``:
    a wrong partial sum; ``right``: every line is right.
    """
    terms = expression.split()
    steps = [m for m in map(STEP_LINE.match, output.strip().split("\n")) if m]
    if len(steps) != len(terms) // 2:
        return "format"
    total = int(terms[0])
    for m, op, term in zip(steps, terms[1::2], terms[2::2], strict=True):
        if int(m[1]) != total or m[2] != op or m[3] != term:
            return "copy"
        total = total + int(term) if op == "+" else total - int(term)
        if int(m[4]) != total:
            return "arithmetic"
    return "right"


def error_table(dirs: list[Path]) -> str:
    """Counts of :func:`first_error` kinds per method, summed over runs (chain_sum outputs)."""
    counts: dict[str, dict[str, int]] = {}
    for d in dirs:
        for method in METHODS:
            path = d / f"{method}.json"
            if not path.is_file() or "outputs" not in (r := json.loads(path.read_text())):
                continue
            args = argparse.Namespace(**r["settings"])
            records = data(args, args.system_prompt).records["test"]
            row = counts.setdefault(method, dict.fromkeys(ERROR_KINDS, 0))
            for record, output in zip(records, r["outputs"], strict=True):
                row[first_error(record["metadata"]["expression"], output)] += 1
    lines = ["| method | " + " | ".join(ERROR_KINDS) + " |", "|---|" + "---:|" * len(ERROR_KINDS)]
    lines += [f"| {LABELS[m]} | " + " | ".join(str(row[k]) for k in ERROR_KINDS) + " |" for m, row in counts.items()]
    table = "\n".join(lines)
    print(table)
    return table


def compare_runs(dirs: list[Path]) -> str:
    """Accuracy of each method across runs (e.g. split seeds), one column per run, and the mean."""
    runs = [{m: json.loads((d / f"{m}.json").read_text()) for m in METHODS if (d / f"{m}.json").is_file()}
            for d in dirs]
    seeds = [next(iter(r.values()))["settings"]["seed"] if r else "?" for r in runs]
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|" + "---:|" * (len(runs) + 1)]
    for method in METHODS:
        if not all(method in r for r in runs):
            continue
        accs = [r[method]["accuracy"] for r in runs]
        lines.append(f"| {LABELS[method]} | " + " | ".join(f"{100 * a:.1f}%" for a in accs)
                     + f" | {100 * sum(accs) / len(accs):.1f}% |")
    table = "\n".join(lines)
    print(table)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--report", action="store_true", help="combine the JSON files into a table and a plot")
    parser.add_argument("--compare", nargs="+", metavar="DIR", help="accuracy table across several --out folders")
    parser.add_argument("--errors", nargs="+", metavar="DIR", help="where worked solutions go wrong, per method")
    parser.add_argument("--out", default="outputs/soft_prompt_results")
    parser.add_argument("--plot", default="docs/_static/soft_prompt_loss.png", help="loss-curve PNG ('': none)")
    parser.add_argument("--model", default="smollm2-135m",
                        help="the base model (a folder works: the small model of docs/results_transfer.md)")
    parser.add_argument("--task", default="chain_sum")
    parser.add_argument("--task-config", default='{"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}')
    parser.add_argument("--system-prompt", default=SYSTEM_PROMPT, help="system message of every chat")
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps (the CPU budget)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--target", default="solution", choices=("solution", "answer"),
                        help="train on worked solutions (partial sums) or on the bare answer")
    parser.add_argument("--lr", type=float, default=None, help="override the method's learning rate")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dp-epsilon", type=float, default=None,
                        help="tune prompt_tuning with DP-SGD (Opacus) at this epsilon (delta = 1/train size)")
    parser.add_argument("--dp-clip", type=float, default=1.0, help="DP-SGD per-example clipping norm")
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--eval-batch", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peft-generate", action="store_true",
                        help="decode peft_prompt_tuning with PEFT's own generate instead of softtok's loop")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.errors:
        error_table([Path(d) for d in args.errors])
        return
    if args.compare:
        compare_runs([Path(d) for d in args.compare])
        return
    if args.report:
        report(out, Path(args.plot))
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    out.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        result = run_method(method, args)
        (out / f"{method}.json").write_text(json.dumps(result, indent=1))
        print(f"{method}: {result['correct']}/{result['n_test']} = {100 * result['accuracy']:.1f}% "
              f"({result['total_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
