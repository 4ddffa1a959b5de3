"""Speed of one soft-token step: eager vs compiled SoftEmbedding vs the dense ``softmax @ E`` baseline.

For every ``(B, K, D)`` in the grid (V = 49152, SmolLM2's vocabulary) the script times

* ``eager``: ``SoftEmbedding(...)(logits)`` -- filters (T = 0.6, top_k = 30, top_p = 0.95,
  min_p = 0.001), entropy, the top-K mixer and the sparse weighted sum of K embedding rows;
* ``compiled``: the same module with ``compile=True`` (Inductor);
* ``dense``: the full-vocabulary soft input ``softmax(logits / T) @ E`` (no filters), the
  ``[B, V] x [V, D]`` product the sparse path avoids. It does not depend on K; timing it again
  on every K row shows how much the machine's load moves the numbers.

Each timing is the median over interleaved rounds (eager, compiled, dense, eager, ...) of
``torch.utils.benchmark.Timer`` blocks of ~50 ms, after warm-up calls; the compiled module is
compiled (and the compile time recorded) before timing. One JSON object is printed per row, then a
summary object. Everything runs in fp32 under ``torch.no_grad()``.

Usage:
    python benchmarks/mixing.py                 # full grid, CPU (and CUDA when available)
    python benchmarks/mixing.py --quick         # small grid, a smoke test
    python benchmarks/mixing.py --device cpu --threads 1 --repeats 9
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.benchmark import Timer

from softtok.soft import FilterConfig, SoftEmbedding, TopKMixer

VOCAB = 49152  # SmolLM2
FILTERS = FilterConfig(temperature=0.6, top_k=30, top_p=0.95, min_p=0.001)
FULL_GRID = {"batch": [1, 8, 64], "topk": [1, 10, 30], "dim": [576, 4096]}
QUICK_GRID = {"batch": [1, 8], "topk": [10], "dim": [576]}


def calls_per_block(fn: Callable[[], object], block_s: float) -> int:
    """How many calls of ``fn`` fill about ``block_s`` seconds (at least 1)."""
    once = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).timeit(1).median
    return max(1, math.ceil(block_s / max(once, 1e-7)))


def interleaved_median_ms(
    fns: dict[str, Callable[[], object]], repeats: int, block_s: float, warmup: int
) -> dict[str, float]:
    """Median per-call time (ms) of each function over ``repeats`` interleaved rounds.

    Every round times one block of each function in turn, so a burst of load from other processes
    hits all of them alike instead of skewing one; the median over rounds discards such bursts.
    ``Timer`` synchronises CUDA around each block.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    threads = torch.get_num_threads()
    timers = {
        name: (Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads), calls_per_block(fn, block_s))
        for name, fn in fns.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (timer, number) in timers.items():
            samples[name].append(timer.timeit(number).median)
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


def bench_device(
    device: str, grid: dict, vocab: int, repeats: int, block_s: float, warmup: int, seed: int
) -> list[dict]:
    """Time the three paths for every grid point on ``device``; prints and returns the rows."""
    rows = []
    for dim in grid["dim"]:
        torch.manual_seed(seed)
        embedding = nn.Embedding(vocab, dim, device=device).requires_grad_(False)
        for batch in grid["batch"]:
            logits = torch.randn(batch, vocab, device=device) * 3
            for topk in grid["topk"]:
                eager = SoftEmbedding(embedding, FILTERS, TopKMixer(topk))
                # A fresh dynamo cache per row: each (B, K, D) is a new specialisation, and past
                # recompile_limit (8) entries dynamo would silently run the compiled path in eager.
                torch._dynamo.reset()
                compiled = SoftEmbedding(embedding, FILTERS, TopKMixer(topk), compile=True)
                start = time.perf_counter()
                compiled(logits)
                if device == "cuda":
                    torch.cuda.synchronize()
                compile_s = time.perf_counter() - start
                fns = {
                    "eager": lambda: eager(logits),  # noqa: B023
                    "compiled": lambda: compiled(logits),  # noqa: B023
                    "dense": lambda: torch.softmax(logits / FILTERS.temperature, dim=-1) @ embedding.weight,  # noqa: B023
                }
                ms = interleaved_median_ms(fns, repeats, block_s, warmup)
                row = {
                    "device": device,
                    "B": batch,
                    "K": topk,
                    "D": dim,
                    "V": vocab,
                    "eager_ms": round(ms["eager"], 4),
                    "compiled_ms": round(ms["compiled"], 4),
                    "dense_ms": round(ms["dense"], 4),
                    "compiled_speedup": round(ms["eager"] / ms["compiled"], 3),
                    "sparse_vs_dense": round(ms["dense"] / ms["eager"], 3),
                    "compile_s": round(compile_s, 2),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary(rows: list[dict], args: argparse.Namespace, wall_s: float) -> dict:
    """Environment and geometric means / ranges of the two ratios, per device."""
    out: dict = {
        "summary": True,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "repeats": args.repeats,
        "block_s": args.block_s,
        "wall_s": round(wall_s, 1),
        "devices": {},
    }
    for device in sorted({r["device"] for r in rows}):
        sub = [r for r in rows if r["device"] == device]
        entry = {"rows": len(sub)}
        if device == "cuda":
            entry["gpu"] = torch.cuda.get_device_name()
        for key in ("compiled_speedup", "sparse_vs_dense"):
            values = [r[key] for r in sub]
            entry[key] = {"geomean": round(geomean(values), 3), "min": min(values), "max": max(values)}
        out["devices"][device] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid (B in {1, 8}, K = 10, D = 576)")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, plus CUDA when available"
    )
    parser.add_argument("--vocab", type=int, default=VOCAB, help="vocabulary size V (default: SmolLM2's 49152)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds (the median is kept)")
    parser.add_argument("--block-s", type=float, default=0.05, help="seconds of calls per timed block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before each measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    grid = QUICK_GRID if args.quick else FULL_GRID
    start = time.perf_counter()
    rows = []
    with torch.no_grad():
        for device in devices:
            rows += bench_device(device, grid, args.vocab, args.repeats, args.block_s, args.warmup, args.seed)
    print(json.dumps(summary(rows, args, time.perf_counter() - start)), flush=True)


if __name__ == "__main__":
    main()
