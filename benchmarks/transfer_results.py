"""POST prompt transfer on SmolLM2-135M-Instruct: the four rows of the issue, scored side by side.

Every row is decoded by the same greedy loop on the same 200 held-out chain_sum problems
(the setup of ``docs/results_soft_prompts.md``: seed 0, 2-3 terms of 1-2 digits, worked
partial sums, 48 new tokens) and scored by the task's scorer:

* ``L zero-shot``: the large model L (SmolLM2-135M-Instruct), no prompt;
* ``S zero-shot``: the small model S (L with every other layer, distilled on public text);
* ``S + P_S``: S with the prompt tuned on S on the private task (the prompt owner's model);
* ``L + P_S copied``: S's prompt put on L unchanged (no transfer: what transfer must beat);
* ``L + transferred``: L with the prompt trained by :mod:`softtok.prompts.transfer` on public
  data and selected on held-out public data;
* ``L + P_L direct``: L with a prompt tuned directly on the private task (the upper bound).

The trained artefacts come from ``benchmarks/transfer_results.sh`` (the commands of
``docs/results_transfer.md``), which ends by calling this script, e.g.::

    python benchmarks/transfer_results.py --small outputs/post/small_model \\
        --source-prompt outputs/post/source/prompts/prompt_tuning \\
        --transferred "KL T=2, absolute::outputs/post/transfer/lightning_logs/version_0/checkpoints/<best>.ckpt" \\
        --direct outputs/post/direct/prompts/prompt_tuning --out outputs/post/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from soft_prompt_results import SYSTEM_PROMPT, data, evaluate_softtok  # noqa: E402

from softtok.generation.prefill import plain_prefill  # noqa: E402
from softtok.metrics import wilson_interval  # noqa: E402
from softtok.models import load_model  # noqa: E402
from softtok.prompts import ModelInfo, PromptTuning  # noqa: E402
from softtok.prompts.transfer import load_prompt  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", default="smollm2-135m", help="the large model L")
    parser.add_argument("--small", required=True, help="the small model S (folder)")
    parser.add_argument("--source-prompt", required=True, help="S's tuned prompt (PEFT folder or .ckpt)")
    parser.add_argument("--other-source", nargs="+", default=[], metavar="LABEL::PATH",
                        help="more prompts of S (e.g. tuned with DP-SGD), each as label::path")
    parser.add_argument("--transferred", nargs="+", default=[], metavar="LABEL::PATH",
                        help="transferred prompts of L (.ckpt or PEFT folder), each as label::path")
    parser.add_argument("--direct", help="L's prompt tuned directly on the task (PEFT folder or .ckpt)")
    parser.add_argument("--out", default="outputs/post/results.json")
    parser.add_argument("--task", default="chain_sum")
    parser.add_argument("--task-config", default='{"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}')
    parser.add_argument("--steps", type=int, default=60, help="the prompt tuning's steps (fixes the train split)")
    parser.add_argument("--batch", type=int, default=8, help="the prompt tuning's batch (fixes the train split)")
    parser.add_argument("--target", default="solution")
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--eval-batch", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    dm = data(args, SYSTEM_PROMPT)  # the soft-prompt results page's test split (train_size = steps x batch)
    large, tok = load_model(args.large)
    small, _ = load_model(args.small)
    source = load_prompt(args.source_prompt, small)
    if not isinstance(source, PromptTuning):
        raise ValueError(f"--source-prompt holds a {source.method} prompt; this page's rows copy a prompt-tuning "
                         "prompt from S to L")
    rows: list[tuple[str, object, object]] = [
        ("L zero-shot", large, plain_prefill),
        ("S zero-shot", small, plain_prefill),
        ("S + P_S (tuned on S)", small, source),
        ("L + P_S copied (no transfer)", large, PromptTuning(source.config, ModelInfo.from_model(large),
                                                             embeddings=source.prompt_embeddings)),
    ]
    for item in args.other_source:
        label, _, path = item.partition("::")
        rows.insert(3, (f"S + P_S ({label})", small, load_prompt(path, small)))
    for item in args.transferred:
        label, _, path = item.partition("::")
        rows.append((f"L + transferred ({label})", large, load_prompt(path, large)))
    if args.direct:
        rows.append(("L + P_L tuned on the task (upper bound)", large, load_prompt(args.direct, large)))
    results = []
    for label, model, prefill in rows:
        start = time.time()
        with torch.no_grad():
            texts, correct = evaluate_softtok(model, tok, dm, prefill, args.max_new_tokens)
        k, n = sum(correct), len(correct)
        results.append({"label": label, "correct": k, "n": n, "accuracy": k / n, "ci95": wilson_interval(k, n),
                        "eval_s": round(time.time() - start, 1), "examples": texts[:4]})
        print(f"{label}: {k}/{n} = {100 * k / n:.1f}% ({time.time() - start:.0f} s)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "rows": results}, indent=1))
    print("| model and prompt | chain_sum test exact match | 95% CI |\n|---|---:|---|")
    for r in results:
        lo, hi = r["ci95"]
        print(f"| {r['label']} | {r['correct']}/{r['n']} = {100 * r['accuracy']:.1f}% | "
              f"{100 * lo:.1f}-{100 * hi:.1f}% |")


if __name__ == "__main__":
    main()
