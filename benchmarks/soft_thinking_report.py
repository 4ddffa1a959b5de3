"""Tables and plots of the Soft Thinking results (the outputs of soft_thinking_results.sh).

    python benchmarks/soft_thinking_report.py outputs/results [--plots docs/_static]

Prints a Markdown table per task (accuracy with a 95% Wilson interval, mean thinking
tokens, wall time, Cold Stop / EOS rates), pass@k for the multi-sample runs, the probe's
mean Jensen-Shannon divergences, and draws the entropy and top-k weight plots.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from softtok.callbacks import read_jsonl
from softtok.metrics import pass_at_k, wilson_interval


def accuracy_table(runs: dict[str, list[dict]], times: dict[str, float]) -> str:
    lines = ["| task | mode | problems | accuracy | 95% CI | mean think tokens | ended by EOS / think_end / budget "
             "| wall s |", "|---|---|---:|---:|---|---:|---|---:|"]
    for name, records in runs.items():
        if name.startswith("passk_") or name.endswith("_probe"):
            continue
        task, mode = name.split("_", 1)
        n, k = len(records), sum(r["correct"] for r in records)
        low, high = wilson_interval(k, n)
        think = sum(r["think_tokens"] for r in records) / n
        ends = "/".join(f"{sum(r['think_end'] == e for r in records) / n:.2f}" for e in ("eos", "think_end", "budget"))
        lines.append(f"| {records[0]['task']} | {mode} | {n} | {k / n:.3f} | [{low:.3f}, {high:.3f}] | {think:.1f} "
                     f"| {ends} | {times.get(name, float('nan')):.0f} |")
    return "\n".join(lines)


def passk_table(runs: dict[str, list[dict]], times: dict[str, float], ks=(1, 4, 16)) -> str:
    lines = ["| mode | problems x samples | " + " | ".join(f"pass@{k}" for k in ks) + " | mean think tokens | wall s |",
             "|---|---|" + "---:|" * (len(ks) + 2)]
    for name, records in runs.items():
        if not name.startswith("passk_"):
            continue
        by_problem = defaultdict(list)
        for r in records:
            by_problem[r["index"]].append(r["correct"])
        n = min(len(v) for v in by_problem.values())
        cells = [sum(pass_at_k(len(v), sum(v), k) for v in by_problem.values()) / len(by_problem) for k in ks if k <= n]
        think = sum(r["think_tokens"] for r in records) / len(records)
        lines.append(f"| {name[6:]} | {len(by_problem)} x {n} | " + " | ".join(f"{c:.3f}" for c in cells)
                     + f" | {think:.1f} | {times.get(name, float('nan')):.0f} |")
    return "\n".join(lines)


def swir_table(runs: dict[str, list[dict]]) -> str:
    """SwiReasoning runs: how much of the thinking was latent, how often rows switched, how long latent runs were."""
    lines = ["| run | latent fraction (mean) | rows with a latent step | switches / row | mean latent segment "
             "(steps) | segments of 1 step | ended by switch limit |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, records in runs.items():
        if "latent_fraction" not in records[0]:
            continue
        n = len(records)
        segments = [length for r in records for length in r["latent_segments"]]
        count = max(len(segments), 1)
        lines.append(
            f"| {name} | {sum(r['latent_fraction'] for r in records) / n:.3f} "
            f"| {sum(r['latent_fraction'] > 0 for r in records) / n:.2f} "
            f"| {sum(r['switch_count'] for r in records) / n:.2f} "
            f"| {sum(segments) / count:.2f} | {sum(s == 1 for s in segments) / count:.2f} "
            f"| {sum(r['think_end'] == 'switch_limit' for r in records) / n:.2f} |")
    return "\n".join(lines)


def swir_blocks(runs: dict[str, list[dict]], short: int = 5) -> str:
    """SwiReasoning: each row's first latent block (its length, and the accuracy of rows whose block is at most
    ``short`` steps against longer ones); for multi-sample runs, the problems whose samples share that block."""
    import statistics

    lines = []
    for name, records in runs.items():
        if "latent_segments" not in records[0]:
            continue
        first = [r["latent_segments"][0] if r["latent_segments"] else 0 for r in records]  # rows start latent
        q1, median, q3 = statistics.quantiles(first, n=4)
        groups = {f"<= {short}": [r for r, b in zip(records, first, strict=True) if b <= short],
                  f"> {short}": [r for r, b in zip(records, first, strict=True) if b > short]}
        accuracy = ", ".join(f"block {k}: {sum(r['correct'] for r in v) / max(len(v), 1):.3f} ({len(v)} rows)"
                             for k, v in groups.items())
        lines.append(f"{name}: first latent block median {median:g} steps (quartiles {q1:g}, {q3:g}; max "
                     f"{max(first)}); accuracy with {accuracy}")
        by_problem = defaultdict(list)
        for r, b in zip(records, first, strict=True):
            by_problem[r["index"]].append((b, r["correct"]))
        if max(len(v) for v in by_problem.values()) > 1:
            shared = sum(len({b for b, _ in v}) == 1 for v in by_problem.values())
            long = [v for v in by_problem.values() if v[0][0] > short]
            rest = [v for v in by_problem.values() if v[0][0] <= short]
            lines.append(f"  {shared}/{len(by_problem)} problems' samples share their first block; block > {short}: "
                         f"{sum(any(c for _, c in v) for v in long)}/{len(long)} problems solved by any sample, "
                         f"otherwise {sum(any(c for _, c in v) for v in rest)}/{len(rest)}")
    return "\n".join(lines)


def probe_summary(records: list[dict]) -> str:
    rows = [r for r in records if r.get("js_top1") is not None]
    js1 = sum(r["js_top1"] for r in rows) / len(rows)
    js2 = sum(r["js_top2"] for r in rows) / len(rows)
    return (f"Probe over {len(rows)} problems (vanilla soft): mean JS(top-1 one-hot, soft) = {js1:.4f} nats, "
            f"mean JS(top-2 one-hot, soft) = {js2:.4f} nats (ln 2 = 0.693 is the maximum).")


def plots(records: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    traces = [r["entropy"] for r in records if r.get("entropy")]
    horizon = max(len(t) for t in traces)
    mean = [sum(t[i] for t in traces if len(t) > i) / sum(len(t) > i for t in traces) for i in range(horizon)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for t in traces[:20]:
        ax.plot(t, color="0.8", linewidth=0.8)
    ax.plot(mean, color="C0", linewidth=2, label=f"mean over {len(traces)} problems")
    ax.set_xlabel("thinking step")
    ax.set_ylabel("entropy (nats)")
    ax.set_title("Entropy of the tempered next-token distribution while thinking")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "soft_thinking_entropy.png", dpi=120)

    example = max((r for r in records if r.get("topk_weights")), key=lambda r: min(len(r["topk_weights"]), 24))
    steps = example["topk_weights"][:24]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    bottom = [0.0] * len(steps)
    for k in range(max(len(s) for s in steps)):
        heights = [s[k] if k < len(s) else 0.0 for s in steps]
        ax.bar(range(len(steps)), heights, bottom=bottom, color=f"C{k % 10}", width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xlabel("thinking step (bars: the top-k mixture weights, largest at the bottom)")
    ax.set_ylabel("weight")
    ax.set_title(f"Concept-token weights, problem {example['index']}: {example['question'].split(': ')[-1][:40]}")
    fig.tight_layout()
    fig.savefig(out / "soft_thinking_topk.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--plots", type=Path, default=None, help="folder for the PNG plots")
    opts = parser.parse_args()
    order = ["discrete_greedy", "discrete_sampled", "soft", "dirichlet", "gumbel", "moi", "multiplex", "swir",
             "swir_w32", "probe"]
    rank = lambda p: (p.stem.split("_", 1)[0], order.index(p.stem.split("_", 1)[1]))  # noqa: E731
    runs = {p.stem: read_jsonl(p) for p in sorted(opts.results.glob("*.jsonl"), key=rank)}
    times_file = opts.results / "times.tsv"
    times = {}
    if times_file.exists():
        times = {k: float(v) for k, v in (line.split("\t") for line in times_file.read_text().splitlines())}
    print(accuracy_table(runs, times), "\n")
    if any(k.startswith("passk_") for k in runs):
        print(passk_table(runs, times), "\n")
    if any("latent_fraction" in records[0] for records in runs.values()):
        print(swir_table(runs), "\n")
        print(swir_blocks(runs), "\n")
    if "arith_probe" in runs:
        print(probe_summary(runs["arith_probe"]))
        if opts.plots:
            plots(runs["arith_probe"], opts.plots)


if __name__ == "__main__":
    main()
