"""The policy update end to end on a tiny model: the reward rises on a learnable reward, hard and soft."""

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from softtok.generation import SoftThinkingGenerator
from softtok.rl.rollout import RolloutConfig, generate_rollouts
from softtok.rl.update import AlgorithmConfig, policy_update

PROMPTS = ["1 + 2 =", "x y", "7 - 3 =", "ab"]
TARGET = set("0123456789")  # a digit starts the answer: about 1 in 8 tokens of the tiny vocabulary at first


def digit_reward(completions_answers):
    return torch.tensor([float(bool(a) and a[0] in TARGET) for a in completions_answers])


def train_on_digit_reward(mode: str, algorithm: AlgorithmConfig, steps: int = 30) -> list[float]:
    """A tiny llama, 4 prompts, G = 8, AdamW lr 3e-3: the mean reward of each update."""
    torch.manual_seed(0)
    model = tiny_model("llama")
    rollout = RolloutConfig(mode=mode, group_size=8, think_end="</think>", max_think_tokens=3, max_answer_tokens=2)
    generator = SoftThinkingGenerator(model, tiny_tokenizer(), rollout.generation_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for step in range(steps):
        model.eval()
        batch = generate_rollouts(generator, PROMPTS, rollout, seeds=[1000 * step + i for i in range(len(PROMPTS))])
        rewards = digit_reward([r.answer for r in batch.results])
        model.train()
        history.append(policy_update(model, optimizer, batch, rewards, rollout, algorithm)["reward_mean"])
    return history


#: The settings of the check (benchmarks/rl_tiny_reward.py prints their table).
SETTINGS = {
    "hard-rloo": ("hard", AlgorithmConfig()),  # RLOO, the paper's default
    "soft-rloo": ("soft", AlgorithmConfig()),
    "soft-grpo": ("soft", AlgorithmConfig(estimator="grpo", loss_type="dapo", epsilon_low=0.2, inner_epochs=2)),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_reward_rises_on_a_learnable_reward(setting):
    history = train_on_digit_reward(*SETTINGS[setting])
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last > first + 0.3, history


def test_bad_algorithm_settings():
    for kw, match in [(dict(estimator="ppo"), "estimator='ppo'"), (dict(inner_epochs=0), "inner_epochs=0"),
                      (dict(loss_type="mean"), "loss_type='mean'"), (dict(max_grad_norm=0.0), "max_grad_norm=0.0"),
                      (dict(epsilon_low=-1.0), "epsilon_low=-1.0")]:
        with pytest.raises(ValueError, match=match):
            AlgorithmConfig(**kw)


@pytest.mark.slow
def test_the_research_code_example_runs_on_the_embedded_model(monkeypatch, capsys):
    """examples/continuous_cot_rl.py: soft rollouts on SmolLM2, a custom reward, one RLOO update."""
    import importlib.util
    import os
    import sys

    from test_models import require_embedded

    require_embedded("smollm2-135m")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                        "continuous_cot_rl.py")
    spec = importlib.util.spec_from_file_location("continuous_cot_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(sys, "argv", ["x", "--steps", "1", "--prompts", "1", "--group", "2"])
    example.main()
    assert "step 0: reward" in capsys.readouterr().out


def test_a_non_finite_loss_stops_before_the_optimizer_steps():
    torch.manual_seed(0)
    model = tiny_model("llama")
    rollout = RolloutConfig(mode="soft", group_size=2, max_think_tokens=3, max_answer_tokens=2)
    batch = generate_rollouts(SoftThinkingGenerator(model, tiny_tokenizer(), rollout.generation_config()),
                              PROMPTS[:2], rollout, seeds=[1, 2])
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    advantages = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    with pytest.raises(FloatingPointError, match="the policy loss is nan .* the optimizer was not stepped"):
        policy_update(model, optimizer, batch, torch.zeros(4), rollout, AlgorithmConfig(), advantages=advantages)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(ValueError, match="beta=0.1 needs ref_logp"):
        policy_update(model, optimizer, batch, torch.zeros(4), rollout, AlgorithmConfig(beta=0.1))
