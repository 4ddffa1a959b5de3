"""Soft Thinking with a custom mixer, in a few lines of research code.

A "sharpened" concept token: keep the top-K candidates and raise their weights to a
power gamma > 1 before renormalising, so the mixture leans harder on the top-1 token
(gamma = 1 is vanilla Soft Thinking; gamma -> inf is greedy decoding).

    python examples/soft_thinking_custom_mixer.py [--gamma 2.0] [--problems 8]
"""

import argparse

import reasoning_gym
import torch

from softtok.answers import check_answer, extract_answer
from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.models import load_model
from softtok.modules import DEFAULT_SYSTEM_PROMPT
from softtok.soft import Mixer
from softtok.soft.filters import renormalize
from softtok.soft.random import RowRandom


class PowerMixer(Mixer):
    """Top-K weights to the power ``gamma``, renormalised (ids stay sorted: the power is monotone)."""

    def __init__(self, max_topk: int = 10, gamma: float = 2.0) -> None:
        super().__init__(max_topk)
        self.gamma = gamma

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, rng: RowRandom | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        ids, weights = self._cut(ids, weights)
        return ids, renormalize(weights.pow(self.gamma))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gamma", type=float, default=2.0)
    parser.add_argument("--problems", type=int, default=8)
    opts = parser.parse_args()

    model, tokenizer = load_model("smollm2-135m")
    config = GenerationConfig(mode="soft", think_end="Final answer:", max_think_tokens=128, stop_strings=["\n"])
    generator = SoftThinkingGenerator(model, tokenizer, config, mixer=PowerMixer(config.max_topk, opts.gamma))

    data = reasoning_gym.create_dataset("chain_sum", size=opts.problems, seed=7, min_terms=2, max_terms=3,
                                        min_digits=1, max_digits=2)
    prompts = [tokenizer.apply_chat_template([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                              {"role": "user", "content": item["question"]}],
                                             tokenize=False, add_generation_prompt=True) for item in data]
    correct = 0
    for item, result in zip(data, generator.generate(prompts), strict=True):
        prediction = extract_answer(result.thinking + result.answer)
        ok = check_answer(prediction, item["answer"], lambda a, item=item: data.score_answer(a, item))
        correct += ok
        print(f"{item['question'][-30:]!r:34} -> {prediction!s:>6} (ref {item['answer']}) {'ok' if ok else '--'} "
              f"{result.think_tokens} thinking tokens")
    print(f"accuracy {correct}/{len(data)} with PowerMixer(gamma={opts.gamma})")


if __name__ == "__main__":
    main()
