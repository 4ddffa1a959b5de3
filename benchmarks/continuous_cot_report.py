"""Tables and plots of the continuous-CoT results (docs/results_continuous_cot.md).

Reads what ``benchmarks/continuous_cot_results.sh`` wrote under ``OUT`` and prints the
markdown tables (also written to ``OUT/report.md``); the plot goes to
``docs/_static/cc_reward_curves.png``.

    python benchmarks/continuous_cot_report.py outputs/cc_results            # tables + plot
    python benchmarks/continuous_cot_report.py outputs/cc_results --choose   # only the sweep's choice

The learning rate of each training mode is the sweep's best final validation greedy pass@1
(hard inference; the validation split, never the test split); ties go to the smaller rate.
It is written to ``OUT/chosen_lr.json``, which the script's ``train`` stage reads.

Intervals are 95% percentile bootstraps (2,000 resamples, seed 0) over training seeds and
test problems together: each resample draws the seeds and the problems with replacement.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np

from softtok.metrics.passk import pass_at_k

MODES = ("hard", "soft", "fuzzy")
KS = (1, 8, 32)


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a CSVLogger metrics.csv, numbers only (empty cells left out).

    A resumed run's earlier rows are in ``metrics.part<time>.csv`` beside it (the results
    script moves them there: CSVLogger deletes the file of a log folder it reuses); they
    come first, up to the step the resumed rows start from.
    """
    rows = read_csv(path)
    start = min((r["step"] for r in rows), default=float("inf"))
    for part in sorted(path.parent.glob("metrics.part*.csv"), reverse=True):
        earlier = [r for r in read_csv(part) if r["step"] < start]
        rows = earlier + rows
        start = min((r["step"] for r in earlier), default=start)
    return rows


def last(rows: list[dict[str, float]], key: str) -> float:
    return [r[key] for r in rows if key in r][-1]


def sweep(out: Path) -> tuple[dict[str, str], str]:
    """The chosen rate per mode and the sweep table."""
    results: dict[str, dict[str, list[tuple[int, float]]]] = {}
    base = out / "runs/base_val/lightning_logs/version_0/metrics.csv"
    base_val = last(metrics(base), "val/hard_greedy/pass@1") if base.exists() else None
    for run in sorted((out / "runs").glob("*_s1")):
        mode, lr = re.fullmatch(r"(\w+?)_lr([\de.-]+)_s1", run.name).groups()
        path = run / "lightning_logs/version_0/metrics.csv"
        if not (run / "lightning_logs/version_0/model/config.json").exists():
            continue  # unfinished
        rows = metrics(path)
        curve = [(int(r["step"]), r["val/hard_greedy/pass@1"]) for r in rows if "val/hard_greedy/pass@1" in r]
        results.setdefault(mode, {})[lr] = curve
    chosen = {mode: max(sorted(lrs, key=float), key=lambda lr: lrs[lr][-1][1])
              for mode, lrs in results.items()}
    steps = sorted({s for lrs in results.values() for curve in lrs.values() for s, _ in curve})
    lines = ["| mode | lr | " + " | ".join(f"val pass@1, step {s + 1}" for s in steps) + " | chosen |",
             "|---|---|" + "---|" * len(steps) + "---|"]
    if base_val is not None:
        lines.append(f"| base (no RL) | | {base_val:.3f} (before training) |" + " |" * len(steps))
    for mode in MODES:
        for lr in sorted(results.get(mode, {}), key=float):
            curve = dict(results[mode][lr])
            cells = " | ".join(f"{curve[s]:.3f}" if s in curve else "" for s in steps)
            lines.append(f"| {mode} | {lr} | {cells} | {'**yes**' if chosen[mode] == lr else ''} |")
    return chosen, "\n".join(lines)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def per_problem(records: list[dict], k: int) -> dict[int, float]:
    """Unbiased pass@k of each problem from its samples."""
    groups: dict[int, list[bool]] = {}
    for r in records:
        groups.setdefault(r["index"], []).append(bool(r["correct"]))
    return {i: pass_at_k(len(c), sum(c), k) for i, c in sorted(groups.items())}


def bootstrap(matrix: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% interval of ``matrix [seeds, problems]``, resampling seeds and problems."""
    rng = np.random.default_rng(seed)
    s, n = matrix.shape
    stats = [matrix[rng.integers(0, s, s)][:, rng.integers(0, n, n)].mean() for _ in range(resamples)]
    return float(matrix.mean()), float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def cell(values: tuple[float, float, float], scale: float = 100.0, digits: int = 1) -> str:
    mean, low, high = (v * scale for v in values)
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def groups(out: Path) -> dict[str, list[str]]:
    """Model group -> its evaluated model names (base; each mode's seeds)."""
    names = sorted({p.name.split("_hard_")[0].split("_soft_")[0] for p in (out / "eval").glob("*.jsonl")})
    found = {"base": [n for n in names if n == "base"]}
    for mode in MODES:
        found[mode] = [n for n in names if re.fullmatch(rf"{mode}_s\d+", n)]
    return {g: n for g, n in found.items() if n}


def accuracy_tables(out: Path) -> str:
    rows_greedy, rows_k, rows_len = [], [], []
    for group, names in groups(out).items():
        greedy, sampled, length = [], [], []
        for inference in ("hard", "soft"):
            runs = [read_jsonl(out / "eval" / f"{n}_{inference}_greedy.jsonl") for n in names]
            matrix = np.array([list(per_problem(r, 1).values()) for r in runs])
            greedy.append(cell(bootstrap(matrix)))
            files = [out / "eval" / f"{n}_{inference}_sampled.jsonl" for n in names]
            runs = [read_jsonl(f) for f in files if f.exists()]  # soft sampled: seed 1 only
            note = "" if len(runs) == len(names) else f" ({len(runs)} seed)"
            for k in KS:
                matrix = np.array([list(per_problem(r, k).values()) for r in runs])
                sampled.append(cell(bootstrap(matrix)) + note)
            length.append(f"{np.mean([[r['think_tokens'] for r in run] for run in runs]):.1f}{note}")
        label = f"{group} ({len(names)} seed{'s' if len(names) > 1 else ''})" if group != "base" else "base"
        rows_greedy.append(f"| {label} | " + " | ".join(greedy) + " |")
        rows_k.append(f"| {label} | " + " | ".join(sampled) + " |")
        rows_len.append(f"| {label} | " + " | ".join(length) + " |")
    head_k = " | ".join(f"{inf} pass@{k}" for inf in ("hard", "soft") for k in KS)
    return "\n".join([
        "Greedy pass@1 (%), 95% interval:", "",
        "| trained | hard inference | soft inference |", "|---|---|---|", *rows_greedy, "",
        "Sampled pass@k (%), 32 samples per problem, 95% interval:", "",
        f"| trained | {head_k} |", "|---|" + "---|" * 2 * len(KS), *rows_k, "",
        "Mean chain-of-thought length of the sampled runs (tokens = characters):", "",
        "| trained | hard inference | soft inference |", "|---|---|---|", *rows_len,
    ])


def nll_table(out: Path) -> str:
    lines = ["| trained | products NLL (OOD) | chain_sum NLL (in domain) | products greedy acc. | "
             "chain_sum greedy acc. |", "|---|---|---|---|---|"]
    for group, names in groups(out).items():
        cells = {}
        for task in ("products", "chain_sum"):
            rows = [metrics(out / "nll" / f"{n}_{task}" / "lightning_logs/version_0/metrics.csv") for n in names]
            nll = [last(r, "val/nll") for r in rows]
            acc = [last(r, "val/accuracy") for r in rows]
            spread = f" ({min(nll):.3f}-{max(nll):.3f})" if len(nll) > 1 else ""
            cells[task] = (f"{np.mean(nll):.3f}{spread}", f"{100 * np.mean(acc):.1f}")
        lines.append(f"| {group} | {cells['products'][0]} | {cells['chain_sum'][0]} | {cells['products'][1]} | "
                     f"{cells['chain_sum'][1]} |")
    return "\n".join(lines)


def plot(out: Path, chosen: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode, color in zip(MODES, ("C0", "C1", "C2"), strict=True):
        curves, vals = [], []
        for run in sorted((out / "runs").glob(f"{mode}_lr{chosen.get(mode)}_s*")):
            rows = metrics(run / "lightning_logs/version_0/metrics.csv")
            curves.append([r["train/reward_mean"] for r in rows if "train/reward_mean" in r])
            vals.append([(int(r["step"]) + 1, r["val/hard_greedy/pass@1"]) for r in rows
                         if "val/hard_greedy/pass@1" in r])
        if not curves:
            continue
        n = min(map(len, curves))
        mean = np.mean([c[:n] for c in curves], axis=0)
        smooth = np.convolve(mean, np.ones(10) / 10, mode="valid")
        ax_r.plot(np.arange(len(smooth)) + 10, smooth, color=color, label=f"{mode} (lr {chosen[mode]})")
        steps = [s for s, _ in vals[0]]
        ax_v.plot(steps, np.mean([[v for _, v in run] for run in vals], axis=0), "o-", color=color, label=mode)
    base = out / "runs/base_val/lightning_logs/version_0/metrics.csv"
    if base.exists():
        ax_v.axhline(last(metrics(base), "val/hard_greedy/pass@1"), color="gray", ls="--", label="base model")
    ax_r.set(xlabel="optimizer step", ylabel="reward (10-step mean)",
             title="Training reward (64 rollouts a step), mean of 3 seeds")
    ax_v.set(xlabel="optimizer step", ylabel="greedy pass@1, hard inference", ylim=(0.3, 0.65),
             title="Validation (100 problems), mean of 3 seeds")
    ax_r.legend()
    ax_v.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--choose", action="store_true", help="only write chosen_lr.json")
    args = parser.parse_args()
    chosen, sweep_md = sweep(args.out)
    (args.out / "chosen_lr.json").write_text(json.dumps(chosen))
    if args.choose:
        return
    times = dict(line.split("\t") for line in (args.out / "times.tsv").read_text().splitlines())
    report = "\n\n".join([
        "## Learning-rate sweep (seed 1, validation split)", sweep_md,
        "## Test split", accuracy_tables(args.out),
        "## Out-of-domain NLL (nats per solution token, 500 problems; seed range)", nll_table(args.out),
        f"Wall time of all runs: {sum(float(t) for t in times.values()) / 60:.1f} min",
    ])
    (args.out / "report.md").write_text(report + "\n")
    print(report)
    plot(args.out, chosen, Path(__file__).resolve().parent.parent / "docs/_static/cc_reward_curves.png")


if __name__ == "__main__":
    main()
