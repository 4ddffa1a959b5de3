"""Time to first token and KV-cache size: full context vs CompLLM-style compressed context (2x, 4x).

For each context length (synthetic text from :mod:`softtok.data.long_context` sentences,
cut to exactly ``L`` tokens, followed by a short question), batch 1:

* ``full``: the plain prefill forward over ``L + q`` tokens;
* ``compressed_cold``: compress every segment (no cache) + splice + prefill over ``~L / ratio + q``;
* ``compressed_warm``: the segments' concept embeddings come from a filled
  :class:`~softtok.compression.SegmentCache` (CompLLM's reuse across queries) + splice + prefill.

TTFT is the wall time of that work up to the first token's logits (device synchronised),
the median of ``--repeats`` runs after ``--warmup`` runs. KV bytes are the bytes of every
key and value tensor in the ``DynamicCache`` after prefill. Timing does not depend on the
compressor's weights, so an untrained compressor is used unless ``--compressor`` names a
saved one; ``--random-init`` builds the model from its config with random weights (same
shapes and speed) where the weights are not at hand.

Usage::

    python benchmarks/compression.py --device cpu --out outputs/compression/bench_cpu.json
    python benchmarks/compression.py --device cuda --lengths 256 1024 4096 16384
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

from softtok.compression import CompressionConfig, SegmentCache, SegmentCompressor
from softtok.data.long_context import make_record
from softtok.generation.cache import kv_bytes
from softtok.generation.prefill import plain_prefill, prefill_logits


def synthetic_context(tokenizer: Any, length: int, seed: int = 0) -> list[int]:
    """Exactly ``length`` token ids of fact and distractor sentences."""
    ids: list[int] = []
    i = 0
    while len(ids) < length:
        ids += tokenizer(make_record(seed, i, n_people=12, distractors=12)["context"] + " ",
                         add_special_tokens=False)["input_ids"]
        i += 1
    return ids[:length]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Any, device: torch.device, repeats: int, warmup: int) -> tuple[float, Any]:
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    from softtok.models import load_model, load_tokenizer, model_path, resolve_dtype

    if not args.random_init:
        return load_model(args.model, dtype=args.dtype, device=args.device)
    from transformers import AutoConfig, AutoModelForCausalLM

    path = args.model if Path(args.model).is_dir() else model_path(args.model)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=resolve_dtype(args.dtype))
    return model.to(args.device).eval(), load_tokenizer(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="softtok model name, folder or hub id")
    parser.add_argument("--random-init", action="store_true", help="random weights from the model's config")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="model dtype")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096], help="context tokens")
    parser.add_argument("--ratios", type=int, nargs="+", default=[2, 4], help="compression ratios")
    parser.add_argument("--segment-len", type=int, default=20, help="segment length (CompLLM: 20)")
    parser.add_argument("--compressor", default=None, help="folder of a saved compressor (its ratio is used)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per condition (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    model, tokenizer = load(args)
    question = tokenizer("\n\nQuestion: In which city does Alice live?\nAnswer:", add_special_tokens=False)["input_ids"]
    results: dict[str, Any] = {"model": args.model, "random_init": args.random_init, "device": str(device),
                               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                               "dtype": args.dtype, "threads": torch.get_num_threads(), "batch": 1,
                               "repeats": args.repeats, "segment_len": args.segment_len, "runs": []}
    compressors = {}
    if args.compressor:
        c = SegmentCompressor.load(args.compressor, model).eval()
        compressors[c.config.ratio] = c
    else:
        for ratio in args.ratios:
            compressors[ratio] = SegmentCompressor(CompressionConfig(segment_len=args.segment_len, ratio=ratio),
                                                   model).eval()
    with torch.no_grad():
        for length in args.lengths:
            ids = torch.tensor([synthetic_context(tokenizer, length) + question], device=device)
            mask = torch.ones_like(ids)
            ctx = torch.zeros_like(ids)
            ctx[0, :length] = 1

            def full(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> Any:
                pre = plain_prefill(model, ids, mask)
                prefill_logits(model, pre)
                return pre

            t_full, pre = _time(full, device, args.repeats, args.warmup)
            row = {"context_tokens": length, "prompt_tokens": int(ids.shape[1]), "full_ttft_s": t_full,
                   "full_kv_bytes": kv_bytes(pre.cache), "compressed": {}}
            for ratio, compressor in compressors.items():
                cache = SegmentCache(max_entries=None)

                def cold(compressor: SegmentCompressor = compressor, ids: torch.Tensor = ids,
                         mask: torch.Tensor = mask, ctx: torch.Tensor = ctx) -> Any:
                    pre = compressor.prefill(ctx)(model, ids, mask)
                    prefill_logits(model, pre)
                    return pre

                def warm(compressor: SegmentCompressor = compressor, ids: torch.Tensor = ids,
                         mask: torch.Tensor = mask, ctx: torch.Tensor = ctx, cache: SegmentCache = cache) -> Any:
                    pre = compressor.prefill(ctx, cache=cache)(model, ids, mask)
                    prefill_logits(model, pre)
                    return pre

                t_cold, pre_c = _time(cold, device, args.repeats, args.warmup)
                t_warm, _ = _time(warm, device, args.repeats, max(1, args.warmup))  # the warm-up fills the cache
                kv = kv_bytes(pre_c.cache)
                if not kv or not row["full_kv_bytes"]:
                    raise RuntimeError("the prefill left the KV cache empty; this transformers version does not "
                                       "fill the cache passed to the model")
                row["compressed"][str(ratio)] = {
                    "positions": int(pre_c.inputs_embeds.shape[1]), "cold_ttft_s": t_cold, "warm_ttft_s": t_warm,
                    "kv_bytes": kv, "speedup_cold": t_full / t_cold, "speedup_warm": t_full / t_warm,
                    "kv_ratio": kv / row["full_kv_bytes"], "cache_hits": cache.hits, "cache_misses": cache.misses}
            results["runs"].append(row)
            print(json.dumps(row), file=sys.stderr)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
