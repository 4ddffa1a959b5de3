"""softtok's policy loss equals TRL's ``GRPOTrainer`` loss on the same log-probs and advantages.

TRL's loss is driven directly: ``GRPOTrainer._compute_loss`` bound to a stub that holds the
trainer settings it reads and returns the given per-token log-probs instead of running a model
(no trainer, dataset or model is built). Values and gradients are compared for every loss
aggregation, with clip-higher, off-policy ratios and the k3 KL.
"""

import types
from collections import defaultdict

import pytest
import torch
import trl.trainer.grpo_trainer as trl_grpo  # a dev dependency: a missing trl fails here, never skips

from softtok.rl import policy_loss


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


class TrlLoss:
    """The attributes ``_compute_loss`` reads, for one process and no gradient accumulation."""

    def __init__(self, logp, loss_type, epsilon_low, epsilon_high, beta, max_length):
        self._logp = logp
        self.loss_type, self.epsilon_low, self.epsilon_high, self.beta = loss_type, epsilon_low, epsilon_high, beta
        self.max_completion_length = max_length
        self.importance_sampling_level = "token"
        self.top_entropy_quantile = 1.0
        self.off_policy_mask_threshold = None
        self.aux_loss_enabled = self.use_vllm = self.vllm_importance_sampling_correction = False
        self.current_gradient_accumulation_steps = 1
        self.accelerator = _Accelerator()
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.args = types.SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1)
        self.entropy_coef, self.use_adaptive_entropy, self._entropy_bonus_enabled = 0.0, False, False
        self.model = types.SimpleNamespace(training=True)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        return self._logp, torch.zeros_like(self._logp), None

    def __getattr__(self, name):  # TRL's helper methods (e.g. get_high_entropy_mask), bound to this stub
        attr = getattr(trl_grpo.GRPOTrainer, name)
        return types.MethodType(attr, self) if callable(attr) else attr


def trl_loss(logp, old, ref, adv, mask, loss_type, eps_low, eps_high, beta, max_length):
    inputs = dict(prompt_ids=torch.zeros(len(adv), 1, dtype=torch.long), prompt_mask=torch.ones(len(adv), 1),
                  completion_ids=torch.zeros_like(mask, dtype=torch.long), completion_mask=mask, advantages=adv,
                  old_per_token_logps=old, num_items_in_batch=mask.sum())
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    stub = TrlLoss(logp, loss_type, eps_low, eps_high, beta, max_length)
    return trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradient_equal_trl(loss_type, beta):
    gen = torch.Generator().manual_seed(0)
    n, t = 6, 5
    base = torch.log(torch.rand(n, t, generator=gen, dtype=torch.float64).clamp_min(0.05))
    old = base + 0.3 * torch.randn(n, t, generator=gen, dtype=torch.float64)  # ratios far enough to be clipped
    ref = base + 0.2 * torch.randn(n, t, generator=gen, dtype=torch.float64) if beta else None
    lengths = torch.tensor([5, 3, 1, 4, 2, 5])
    mask = (torch.arange(t)[None] < lengths[:, None]).to(torch.float64)
    adv = torch.randn(n, generator=gen, dtype=torch.float64)

    theirs_logp = base.clone().requires_grad_()
    theirs = trl_loss(theirs_logp, old, ref, adv, mask, loss_type, 0.2, 0.28, beta, t)
    theirs.backward()
    ours_logp = base.clone().requires_grad_()
    ours = policy_loss(ours_logp, adv, mask, old_logp=old, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28,
                       ref_logp=ref, beta=beta, max_length=t)
    ours.loss.backward()
    assert ours.clip_fraction > 0  # the comparison covers clipped steps
    torch.testing.assert_close(ours.loss, theirs, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ours_logp.grad, theirs_logp.grad, atol=1e-12, rtol=1e-10)
