"""The learnable-reward check of the RL parts on a tiny model, as a table (docs/continuous_cot.md).

A 2-layer random Llama learns "the answer starts with a digit" from 30 policy updates
(4 prompts, G = 8, AdamW lr 3e-3), for hard and soft CoT with RLOO and for soft CoT with
clipped GRPO; prints the mean reward over the first and the last 5 updates as JSON lines.
The same setting is the default-run test ``tests/test_rl_update.py``.

    python benchmarks/rl_tiny_reward.py
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_rl_update import PROMPTS, digit_reward  # noqa: E402
from tiny import tiny_model, tiny_tokenizer  # noqa: E402

from softtok.generation import SoftThinkingGenerator  # noqa: E402
from softtok.rl import AlgorithmConfig, RolloutConfig, generate_rollouts, policy_update  # noqa: E402

SETTINGS = [
    ("hard", "RLOO", AlgorithmConfig()),
    ("soft", "RLOO", AlgorithmConfig()),
    ("soft", "GRPO (clipped, 2 epochs, dapo)",
     AlgorithmConfig(estimator="grpo", loss_type="dapo", epsilon_low=0.2, inner_epochs=2)),
]

for mode, name, algorithm in SETTINGS:
    torch.manual_seed(0)
    model = tiny_model("llama")
    rollout = RolloutConfig(mode=mode, group_size=8, think_end="</think>", max_think_tokens=3, max_answer_tokens=2)
    generator = SoftThinkingGenerator(model, tiny_tokenizer(), rollout.generation_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for step in range(30):
        model.eval()
        batch = generate_rollouts(generator, PROMPTS, rollout, seeds=[1000 * step + i for i in range(len(PROMPTS))])
        rewards = digit_reward([r.answer for r in batch.results])
        model.train()
        history.append(policy_update(model, optimizer, batch, rewards, rollout, algorithm)["reward_mean"])
    print(json.dumps({"mode": mode, "estimator": name, "first5": round(sum(history[:5]) / 5, 2),
                      "last5": round(sum(history[-5:]) / 5, 2)}))
