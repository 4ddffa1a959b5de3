"""Step time and peak memory of softtok prompt tuning vs PEFT ``PromptTuning``, same model, batch and length.

One training step = forward, loss, backward, AdamW step on the prompt (base model frozen,
eval mode). Both systems get the same prompt weights, the same right-padded batch of
random tokens and the same labels. Two label layouts are measured:

* ``answer_only``: the last ``--label-tokens`` tokens of each row carry labels, as in
  instruction tuning (softtok then computes vocabulary logits at those positions only;
  PEFT/HF compute them everywhere);
* ``all_tokens``: every real token is labelled (language-model loss; both compute all logits).

Time: the median over ``--steps`` interleaved steps (softtok, PEFT, softtok, ...) after
warm-up, so load from other processes hits both alike. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` above the memory held before the step; on CPU the
running sum, in time order, of the allocations and frees the torch profiler records during
one step (``profile_memory=True``): the step's peak of live tensor bytes on top of the weights.

Usage:
    python benchmarks/prompt_tuning.py                       # SmolLM2-135M, batch 8, length 128, 1 thread
    python benchmarks/prompt_tuning.py --model tiny --steps 5   # a smoke run on a tiny random llama
    python benchmarks/prompt_tuning.py --device cuda --threads 0

Prints one JSON object: settings, per-layout times (ms) and peaks (MiB) for both systems,
and the ratios softtok / PEFT (target: <= 1.0).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from softtok.prompts import PromptTuningConfig, mark_only_prompt_trainable


def load(name: str, device: str):  # noqa: ANN201
    """``(model, tokenizer-or-None)``: the named model, or a tiny random llama for ``"tiny"``."""
    if name == "tiny":
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2)
        return AutoModelForCausalLM.from_config(config).to(device).eval(), None
    from softtok.models import load_model

    return load_model(name, device=device)


def make_batch(vocab: int, batch: int, length: int, label_tokens: int, device: str, seed: int = 0):  # noqa: ANN201
    """Right-padded random rows (lengths from ``length / 2`` to ``length``) and their labels."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=gen)
    lengths[0] = length
    ids = torch.randint(3, vocab, (batch, length), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    if label_tokens > 0:  # only the tail of each row is labelled
        start = (lengths - label_tokens).clamp_min(1)
        labels = labels.masked_fill(torch.arange(length)[None] < start[:, None], -100)
    return ids.to(device), mask.to(device), labels.to(device)


def cpu_peak_bytes(step: Callable[[], None]) -> int:
    """Peak of live tensor bytes allocated during ``step()``, from the torch profiler's memory records.

    Each op records the bytes it allocated net of what it freed (``self_cpu_memory_usage``);
    frees outside ops appear as ``[memory]`` events. Summed in time order they give the
    live-bytes curve of the step; its maximum is the peak.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def cuda_peak_bytes(step: Callable[[], None]) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="softtok model name, folder, hub id, or 'tiny'")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="longest row in tokens (rows vary down to half)")
    parser.add_argument("--n-virtual", type=int, default=20)
    parser.add_argument("--label-tokens", type=int, default=16, help="labelled tail of each row (answer_only)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per system and layout")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: leave torch's default)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import peft

    dev = args.device
    ours_model, _ = load(args.model, dev)
    peft_base, _ = load(args.model, dev)
    torch.manual_seed(0)
    prompt = PromptTuningConfig(n_virtual=args.n_virtual, init="sample_vocab").build(ours_model)
    mark_only_prompt_trainable(ours_model, prompt)
    theirs = peft.get_peft_model(peft_base, peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                      num_virtual_tokens=args.n_virtual))
    theirs.eval()
    peft_weight = theirs.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        peft_weight.copy_(prompt.prompt_embeddings)
    opt_ours = torch.optim.AdamW(prompt.parameters(), lr=1e-3)
    opt_theirs = torch.optim.AdamW([peft_weight], lr=1e-3)
    vocab = ours_model.get_input_embeddings().weight.shape[0]
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    peak = cuda_peak_bytes if dev == "cuda" else cpu_peak_bytes

    report = {"settings": {**vars(args), "torch": torch.__version__, "peft": peft.__version__,
                           "machine": platform.processor() or platform.machine(),
                           "threads": torch.get_num_threads(), "prompt_parameters": prompt.num_parameters()}}
    for layout, label_tokens in (("answer_only", args.label_tokens), ("all_tokens", 0)):
        ids, mask, labels = make_batch(vocab, args.batch, args.length, label_tokens, dev)
        losses: dict[str, float] = {}

        def step_ours(ids=ids, mask=mask, labels=labels, losses=losses) -> None:  # noqa: ANN001
            opt_ours.zero_grad(set_to_none=True)
            loss = prompt.loss(ours_model, ids, mask, labels)
            loss.backward()
            opt_ours.step()
            losses["softtok"] = loss.item()

        def step_theirs(ids=ids, mask=mask, labels=labels, losses=losses) -> None:  # noqa: ANN001
            opt_theirs.zero_grad(set_to_none=True)
            loss = theirs(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt_theirs.step()
            losses["peft"] = loss.item()

        steps = {"softtok": step_ours, "peft": step_theirs}
        for _ in range(args.warmup):
            for fn in steps.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.steps):
            for name, fn in steps.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
        peaks = {name: peak(fn) for name, fn in steps.items()}
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        report[layout] = {
            "labelled_tokens": int((labels[:, 1:] != -100).sum()),
            "step_ms": {k: round(v, 2) for k, v in ms.items()},
            "peak_mib": {k: round(v / 2**20, 2) for k, v in peaks.items()},
            "time_ratio": round(ms["softtok"] / ms["peft"], 3),
            "memory_ratio": round(peaks["softtok"] / peaks["peft"], 3),
            "last_loss": losses,
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
