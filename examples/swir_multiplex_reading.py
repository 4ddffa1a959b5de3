"""SwiReasoning and Multiplex Thinking from Python, then what their concept tokens "say".

Generates one arithmetic problem with SwiReasoning (which steps were latent, how long the
latent segments were) and with Multiplex Thinking (the three samples merged at each step),
then reads the first few concept tokens with their nearest vocabulary rows.

    python examples/swir_multiplex_reading.py [--model smollm2-135m] [--steps 6]
"""

from __future__ import annotations

import argparse

import torch

from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.interpret import vocab_neighbours
from softtok.models import load_model
from softtok.modules import DEFAULT_SYSTEM_PROMPT
from softtok.soft import SoftToken
from softtok.soft.embedding import embed_sparse

QUESTION = "Compute 23 + 45 - 17 ="
#: The recipes' settings (configs/soft_thinking/{swir,multiplex}.yaml); the class defaults are Soft Thinking's.
SETTINGS = {
    "swir": dict(mode="swir", temperature=0.6, top_k=20, top_p=0.95, min_p=0.0, window_size=32),
    "multiplex": dict(mode="multiplex", temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, width=3),
}


def run(model_name: str = "smollm2-135m", steps: int = 6, think_end: str = "Final answer:",
        max_think_tokens: int = 96) -> dict[str, list[str]]:
    """Generate with both modes and print the readings; returns each mode's nearest tokens (by cosine)."""
    model, tokenizer = load_model(model_name)
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                            {"role": "user", "content": QUESTION}],
                                           tokenize=False, add_generation_prompt=True)
    readings = {}
    for name, settings in SETTINGS.items():
        config = GenerationConfig(**settings, think_end=think_end, max_think_tokens=max_think_tokens,
                                  max_answer_tokens=16, stop_strings=["\n"], return_topk=True)
        result = SoftThinkingGenerator(model, tokenizer, config).generate([prompt], seeds=[7])[0]
        print(f"\n{name}: {result.think_tokens} thinking tokens, ended by {result.think_end}; "
              f"thinking {result.thinking[:80]!r}")
        if result.latent is not None:
            print(f"  latent fraction {result.latent_fraction:.2f}, {result.switch_count} switch(es) to explicit, "
                  f"latent segments {result.latent_segments}")
        n = min(steps, result.think_tokens)
        if n == 0:
            readings[name] = []
            continue
        mixtures = SoftToken(torch.tensor(result.topk_ids[:n]), torch.tensor(result.topk_weights[:n]))
        near = vocab_neighbours(embed_sparse(model.get_input_embeddings(), mixtures), model, tokenizer, n=2)
        for t in range(n):
            shown = tokenizer.decode([result.think_ids[t]])
            kind = "" if result.latent is None else (" latent  " if result.latent[t] else " explicit")
            print(f"  step {t}{kind}: shown {shown!r:10} nearest by cosine {near.cosine.tokens[t][0]!r} "
                  f"({float(near.cosine.scores[t, 0]):.2f}), by L2 {near.l2.tokens[t][0]!r}")
        readings[name] = [near.cosine.tokens[t][0] for t in range(n)]
    return readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6, help="concept tokens to read per mode")
    opts = parser.parse_args()
    run(opts.model, opts.steps)


if __name__ == "__main__":
    main()
