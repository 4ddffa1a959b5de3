"""Reward functions: built-ins by hand, the weighted combination, and bad outputs named by function."""

import math

import pytest
import reasoning_gym
import torch

from softtok.rl.rewards import (
    correctness_reward,
    format_reward,
    resolve_rewards,
    score_rewards,
    shaped_reward,
)

COMPLETIONS = ["2 + 3 = 5. Final answer: 5", "so \\boxed{6}", "I think 7", "no idea", "\\boxed{\\frac{1}{2}}"]
REFERENCES = ["5", "5", "7", "4", "0.5"]


def test_built_in_rewards_by_hand():
    assert correctness_reward([""] * 5, COMPLETIONS, REFERENCES) == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert shaped_reward([""] * 5, COMPLETIONS, REFERENCES) == [100.0, 10.0, 100.0, 0.0, 100.0]
    assert format_reward([""] * 5, COMPLETIONS, REFERENCES) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert shaped_reward([""], ["\\boxed{6} then \\boxed{"], ["5"]) == [0.0]  # cut off inside a box: not boxed


def test_reasoning_gym_scorer_in_the_record():
    data = reasoning_gym.create_dataset("chain_sum", size=2, seed=3)
    records = [{"answer": e["answer"], "scorer": lambda a, e=e: data.score_answer(a, e)} for e in data]
    completions = [f"Final answer: {data[0]['answer']}", "Final answer: -99999"]
    assert correctness_reward(["", ""], completions, records) == [1.0, 0.0]


def test_weighted_sum_and_parts():
    fns, weights = resolve_rewards(["correctness", format_reward], [2.0, 0.5])
    total, parts = score_rewards(fns, weights, [""] * 5, COMPLETIONS, REFERENCES)
    assert total.tolist() == [2.5, 0.5, 2.5, 0.0, 2.5]
    assert set(parts) == {"correctness_reward", "format_reward"}


def custom(prompts, completions, references):
    return [len(c) > 10 for c in completions]  # booleans count as 0 / 1


def test_custom_callables_and_booleans():
    total, _ = score_rewards(*resolve_rewards([custom]), [""] * 5, COMPLETIONS, REFERENCES)
    assert total.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(("fn", "match"), [
    (lambda p, c, r: [1.0], "returned 1 values for 5 completions"),
    (lambda p, c, r: [math.nan] * 5, "returned nan"),
    (lambda p, c, r: ["1"] * 5, "returned '1'"),
    (lambda p, c, r: 3.0, "returned float values for 5"),
])
def test_bad_reward_output_names_the_function(fn, match):
    with pytest.raises(ValueError, match="reward function <lambda> returned"):
        score_rewards([fn], [1.0], [""] * 5, COMPLETIONS, REFERENCES)
    with pytest.raises(ValueError, match=match):
        score_rewards([fn], [1.0], [""] * 5, COMPLETIONS, REFERENCES)


@pytest.mark.parametrize(("args", "match"), [
    (([],), "rewards is empty"),
    ((["accuracy"],), "reward 'accuracy' is unknown"),
    (([3],), "neither a built-in name nor callable"),
    ((["correctness"], [1.0, 2.0]), "must be 1 finite numbers"),
    ((["correctness"], [math.inf]), "must be 1 finite numbers"),
])
def test_bad_reward_settings(args, match):
    with pytest.raises(ValueError, match=match):
        resolve_rewards(*args)


def test_tensor_outputs_are_accepted():
    total, _ = score_rewards([lambda p, c, r: torch.ones(len(c))], [3.0], [""] * 5, COMPLETIONS, REFERENCES)
    assert total.tolist() == [3.0] * 5


def test_rewards_by_import_path():
    fns, _ = resolve_rewards(["softtok.rl.rewards.format_reward", "softtok.rl.rewards:shaped_reward"])
    assert fns == [format_reward, shaped_reward]
    for path, match in [("softtok.rl.rewards.nothing", "cannot be imported"), ("nosuchpkg.fn", "cannot be imported"),
                        ("accuracy", "reward 'accuracy' is unknown")]:
        with pytest.raises(ValueError, match=match):
            resolve_rewards([path])
