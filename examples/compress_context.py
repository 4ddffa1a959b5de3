"""Compress a long context into concept embeddings and answer a question from them (CompLLM-style).

Builds a segment compressor on the model, trains it for a few steps by answer-token
distillation on synthetic long-context questions, then answers one question three ways:
full context, compressed context (2x fewer positions) and compressed again from the
segment cache (no compressor forward at all).

    python examples/compress_context.py                 # SmolLM2-135M, about 2 minutes on CPU
    python examples/compress_context.py --tiny          # a tiny random model (seconds; the test runs this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from softtok.compression import CompressionConfig, SegmentCache, SegmentCompressor, distillation_loss
from softtok.data.long_context import LongContextQADataModule
from softtok.prompts.generate import eos_ids, greedy_generate


def load(tiny: bool):  # noqa: ANN201
    if tiny:  # the test suite's tiny llama and character tokenizer, built in code
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny import tiny_model, tiny_tokenizer

        return tiny_model("llama"), tiny_tokenizer()
    from softtok.models import load_model

    return load_model("smollm2-135m")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of SmolLM2")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 2 tiny, 30 SmolLM2)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load(args.tiny)
    steps = args.steps if args.steps is not None else (2 if args.tiny else 30)
    size = dict(n_people=2, distractors=2) if args.tiny else dict(n_people=3, distractors=16)
    data = LongContextQADataModule(tokenizer=tokenizer, train_size=4 * steps, val_size=0, test_size=1,
                                   batch_size=4, system_prompt=None if args.tiny else
                                   "Answer the question using the context. Reply with the answer only.", **size)
    data.setup()

    # 1. The compressor: the same model + a LoRA (off outside the compressor) + a zero-initialised head.
    compressor = SegmentCompressor(CompressionConfig(segment_len=20, ratio=2), model)
    print(f"compressor: {compressor.num_parameters():,} trainable parameters (LoRA + head)")

    # 2. A few steps of answer-token distillation: full-context teacher, compressed-context student.
    optimizer = torch.optim.AdamW(compressor.parameters(), lr=1e-3)
    for step, batch in enumerate(data.train_dataloader()):
        if step >= steps:
            break
        loss = distillation_loss(compressor, model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: KL {loss.item():.4f} nats / answer token")
    compressor.eval()

    # 3. One question, answered from the full context and from its concept embeddings.
    batch = next(iter(data.test_dataloader()))
    record = batch["records"][0]
    ids, mask, ctx = batch["prompt_ids"], batch["prompt_mask"], batch["prompt_context_mask"]
    eos = eos_ids(model, tokenizer)
    full = greedy_generate(model, ids, mask, max_new_tokens=8, eos_token_ids=eos)
    builder = compressor.prefill(ctx)
    compressed = greedy_generate(model, ids, mask, prefill=builder, max_new_tokens=8, eos_token_ids=eos)
    n_context = int(ctx.sum())
    print(f"question: {record['question']}  (reference: {record['answer']})")
    print(f"{n_context} context tokens -> {builder.last.n_concepts[0]} concept embeddings; "
          f"prompt {int(mask.sum())} -> {builder.last.lengths[0]} positions")
    print(f"full context : {tokenizer.decode(full[0], skip_special_tokens=True)!r}")
    print(f"compressed   : {tokenizer.decode(compressed[0], skip_special_tokens=True)!r}")

    # 4. The segment cache: the second query over the same context compresses nothing.
    cache = SegmentCache()
    for _ in range(2):
        greedy_generate(model, ids, mask, prefill=compressor.prefill(ctx, cache=cache), max_new_tokens=8,
                        eos_token_ids=eos)
    print(f"segment cache: {cache.hits} hits, {cache.misses} misses, {len(cache)} segments stored")


if __name__ == "__main__":
    main()
