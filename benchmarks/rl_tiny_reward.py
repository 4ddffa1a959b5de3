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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_rl_update import SETTINGS, train_on_digit_reward  # noqa: E402

for name, (mode, algorithm) in SETTINGS.items():
    history = train_on_digit_reward(mode, algorithm)
    print(json.dumps({"setting": name, "mode": mode, "estimator": algorithm.estimator, "loss_type": algorithm.loss_type,
                      "first5": round(sum(history[:5]) / 5, 2), "last5": round(sum(history[-5:]) / 5, 2)}))
