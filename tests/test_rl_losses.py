"""RL estimators against hand computations: advantages, clipping, KL, and the four loss aggregations."""

import math

import pytest
import torch

from softtok.rl import advantages, grpo_advantages, policy_loss, rloo_advantages

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0])  # two groups of three


def test_rloo_advantages_by_hand():
    # Group 1: [1, 0, 0]: 1 - (0 + 0) / 2 = 1; 0 - (1 + 0) / 2 = -0.5. Group 2: [1, 3, 3]: 1 - 3 = -2; 3 - 2 = 1.
    assert rloo_advantages(REWARDS, 3).tolist() == [1.0, -0.5, -0.5, -2.0, 1.0, 1.0]


def test_grpo_advantages_by_hand():
    # Group 1: mean 1/3, Bessel std sqrt(1/3); group 2: mean 7/3, std sqrt(4/3).
    s1, s2 = math.sqrt(1 / 3) + 1e-4, math.sqrt(4 / 3) + 1e-4
    want = [(2 / 3) / s1, (-1 / 3) / s1, (-1 / 3) / s1, (-4 / 3) / s2, (2 / 3) / s2, (2 / 3) / s2]
    assert grpo_advantages(REWARDS, 3).tolist() == pytest.approx(want, rel=1e-6)
    centred = [2 / 3, -1 / 3, -1 / 3, -4 / 3, 2 / 3, 2 / 3]
    assert grpo_advantages(REWARDS, 3, "none").tolist() == pytest.approx(centred, rel=1e-6)
    batch_std = REWARDS.std().item() + 1e-4
    assert grpo_advantages(REWARDS, 3, "batch").tolist() == pytest.approx([c / batch_std for c in centred], rel=1e-6)
    assert advantages(REWARDS, 3, "grpo").tolist() == grpo_advantages(REWARDS, 3).tolist()


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_equal_rewards_give_zero_advantages_and_zero_gradient(estimator):
    adv = advantages(torch.full((6,), 0.7), 3, estimator)
    assert torch.equal(adv, torch.zeros(6))
    logp = torch.randn(6, 4, requires_grad=True)
    policy_loss(logp, adv, torch.ones(6, 4)).loss.backward()
    assert torch.equal(logp.grad, torch.zeros(6, 4))


# A ragged batch: 3 sequences with 2, 3 and 1 valid steps out of 3.
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
ADV = torch.tensor([1.0, -2.0, 0.5])


def per_step_first_pass():
    """At ratio 1 the per-step loss is -A (value); by hand per row: [-1, -1, *], [2, 2, 2], [-0.5, *, *]."""
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3], [0.7, 0.9, 0.9]])).requires_grad_()
    return logp


@pytest.mark.parametrize(("loss_type", "value", "kw"), [
    ("grpo", (-1.0 + 2.0 - 0.5) / 3, {}),                    # per-row means -1, 2, -0.5, then the mean
    ("bnpo", (-2.0 + 6.0 - 0.5) / 6, {}),                    # sum over the 6 valid steps / 6
    ("dr_grpo", (-2.0 + 6.0 - 0.5) / (3 * 4), {"max_length": 4}),
    ("dapo", (-2.0 + 6.0 - 0.5) / 12, {"num_items": 12}),   # global token count (e.g. 2 processes)
    ("dapo", (-2.0 + 6.0 - 0.5) / 6, {}),                    # default: this batch's count
    ("luspo", (-2.0 + 6.0 - 0.5) / 3, {}),                   # per-sequence sums, then the mean (the paper's RLOO)
])
def test_loss_aggregations_by_hand(loss_type, value, kw):
    logp = per_step_first_pass()
    out = policy_loss(logp, ADV, MASK, loss_type=loss_type, **kw)
    assert out.loss.item() == pytest.approx(value, rel=1e-6)
    out.loss.backward()
    # d loss / d logp = -A * (weight of the step in the aggregation); masked steps get nothing.
    weights = {"grpo": MASK / MASK.sum(-1, keepdim=True) / 3, "bnpo": MASK / 6,
               "dr_grpo": MASK / 12, "dapo": MASK / kw.get("num_items", 6), "luspo": MASK / 3}[loss_type]
    torch.testing.assert_close(logp.grad, -ADV[:, None] * weights)


def test_clipping_by_hand():
    """Ratios 1.5 and 0.5 with epsilon 0.2: a positive advantage is capped at 1.2, a negative one at 0.8."""
    old = torch.zeros(2, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    out = policy_loss(logp, adv, torch.ones(2, 1), old_logp=old, loss_type="bnpo", epsilon_low=0.2)
    # min(1.5 * 1, 1.2 * 1) = 1.2 -> -1.2; min(0.5 * -1, 0.8 * -1) = -0.8 -> 0.8; mean -0.2.
    assert out.loss.item() == pytest.approx(-0.2)
    assert out.clip_fraction.item() == 1.0
    out.loss.backward()
    assert torch.equal(logp.grad, torch.zeros(2, 1))  # both clipped: no gradient
    # Without clipping (RLOO): -(1.5 - 0.5) / 2 and gradients -A * ratio / 2.
    logp.grad = None
    out = policy_loss(logp, adv, torch.ones(2, 1), old_logp=old, loss_type="bnpo", epsilon_low=None)
    assert out.loss.item() == pytest.approx(-0.5) and out.clip_fraction.item() == 0.0
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.75], [0.25]]))
    # Clip-higher: epsilon_high = 0.6 lets ratio 1.5 through.
    out = policy_loss(logp, adv, torch.ones(2, 1), old_logp=old, loss_type="bnpo", epsilon_low=0.2, epsilon_high=0.6)
    assert out.loss.item() == pytest.approx((-1.5 + 0.8) / 2)


def test_k3_kl_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.2]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25, 0.2]]))
    out = policy_loss(logp, torch.zeros(1), torch.ones(1, 2), ref_logp=ref, beta=0.1, loss_type="bnpo")
    kl = 0.5 - math.log(0.5) - 1  # exp(ref - logp) - (ref - logp) - 1 with ref - logp = log(0.5); 0 for the second
    assert out.kl.item() == pytest.approx(kl / 2)
    assert out.loss.item() == pytest.approx(0.1 * kl / 2)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: rloo_advantages(REWARDS, 1), "group_size=1 must be an integer >= 2"),
    (lambda: grpo_advantages(REWARDS, 4), "multiple of group_size=4"),
    (lambda: grpo_advantages(REWARDS, 3, "rows"), "scale_rewards='rows' is unknown"),
    (lambda: rloo_advantages(torch.tensor([1.0, float("nan")]), 2), "rewards must be finite"),
    (lambda: advantages(REWARDS, 3, "ppo"), "estimator='ppo' is unknown"),
    (lambda: policy_loss(torch.zeros(3, 3), ADV, MASK, loss_type="sum"), "loss_type='sum' is unknown"),
    (lambda: policy_loss(torch.zeros(3, 3), ADV, MASK, loss_type="dr_grpo"), "max_length=None must be >= 1"),
    (lambda: policy_loss(torch.zeros(3, 3), ADV, MASK, beta=0.1), "beta > 0 needs ref_logp"),
    (lambda: policy_loss(torch.zeros(3, 3), ADV, MASK, epsilon_low=-0.1), "epsilon_low=-0.1"),
    (lambda: policy_loss(torch.zeros(3, 2), ADV, MASK), "logp and mask must both be"),
    (lambda: policy_loss(torch.zeros(3, 3), ADV[:2], MASK), "advantages must be"),
])
def test_bad_input_names_the_value(call, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_epsilon_high_alone_is_refused():
    with pytest.raises(ValueError, match="epsilon_high=0.28 needs epsilon_low"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), epsilon_low=None, epsilon_high=0.28)
