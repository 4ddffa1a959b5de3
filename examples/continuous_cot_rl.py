"""Continuous-CoT RL from research code: soft rollouts, a custom reward, RLOO updates (no CLI, no Lightning).

"Soft Tokens, Hard Truths": the chain of thought is fed as noisy mixtures of token
embeddings, ``h~_t = softmax(logits / 0.5) @ E + sigma * N(0, I)``, and trained with RLOO
on a reward of the final answer. This script runs that loop on the embedded
SmolLM2-135M-Instruct and reasoning-gym chain_sum problems, with a reward written here:
the built-in correctness reward plus a small bonus for a short chain of thought.

    python examples/continuous_cot_rl.py [--mode soft|fuzzy|hard] [--steps 4] [--group 4]
"""

import argparse

import reasoning_gym
import torch

from softtok.generation import SoftThinkingGenerator
from softtok.models import load_model
from softtok.modules import DEFAULT_SYSTEM_PROMPT
from softtok.rl import (
    AlgorithmConfig,
    RolloutConfig,
    correctness_reward,
    generate_rollouts,
    policy_update,
    resolve_rewards,
    score_rewards,
)


def brevity_reward(prompts, completions, references):
    """A custom reward: 0.1 for a completion under 200 characters (any callable with this signature works)."""
    return [0.1 if len(c) < 200 else 0.0 for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="soft", choices=["hard", "soft", "fuzzy"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="rollouts per prompt (G)")
    parser.add_argument("--lr", type=float, default=1e-5)
    opts = parser.parse_args()

    model, tokenizer = load_model("smollm2-135m")
    rollout = RolloutConfig(mode=opts.mode, group_size=opts.group, think_end="Final answer:", max_think_tokens=48,
                            max_answer_tokens=8, stop_strings=("\n",))
    algorithm = AlgorithmConfig()  # RLOO, no clipping, no KL: the paper's defaults
    rewards, weights = resolve_rewards([correctness_reward, brevity_reward])
    generator = SoftThinkingGenerator(model, tokenizer, rollout.generation_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr)
    data = reasoning_gym.create_dataset("chain_sum", size=opts.steps * opts.prompts, seed=7, min_terms=2,
                                        max_terms=3, min_digits=1, max_digits=2)

    for step in range(opts.steps):
        items = [data[step * opts.prompts + i] for i in range(opts.prompts)]
        prompts = [tokenizer.apply_chat_template([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                                  {"role": "user", "content": item["question"]}],
                                                 tokenize=False, add_generation_prompt=True) for item in items]
        model.eval()
        batch = generate_rollouts(generator, prompts, rollout, seeds=[1000 * step + i for i in range(len(items))])
        references = [{"answer": item["answer"], "scorer": lambda a, item=item: data.score_answer(a, item)}
                      for item in items for _ in range(opts.group)]
        reward, parts = score_rewards(rewards, weights, [p for p in prompts for _ in range(opts.group)],
                                      batch.completions, references)
        model.train()
        stats = policy_update(model, optimizer, batch, reward, rollout, algorithm)
        accuracy = parts["correctness_reward"].mean().item()
        print(f"step {step}: reward {stats['reward_mean']:.3f} (accuracy {accuracy:.2f}), loss {stats['loss']:.1f}, "
              f"CoT {stats['cot_tokens']:.0f} tokens, grad norm {stats['grad_norm']:.2f}")


if __name__ == "__main__":
    main()
