"""DP-SGD for soft prompts, through Opacus (optional: ``pip install -e ".[dp]"``).

POST lets the prompt owner tune the small model's prompt with differential privacy
(DP-SGD, Abadi et al. 2016), so that even the prompt carries a bounded amount of
information about any one private example. softtok leaves the privacy-critical parts to
Opacus (``opacus.optimizers.DPOptimizer``: per-example clipping to ``max_grad_norm``,
Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm``, averaging over
the expected batch size; ``opacus.accountants.RDPAccountant``: the privacy spent) and only
computes the per-example gradients. A prompt module calls the base model through its own
``forward`` (the model is an argument, not a submodule), which Opacus' hooks cannot wrap, so
each example's gradient is taken by its own backward pass (microbatches of one: exact, and
as fast as a batched pass on CPU for prompts; the prompt is the only trainable tensor).

The accountant's epsilon assumes Poisson sampling with rate ``batch_size / dataset_size``;
the fixed-size shuffled batches of softtok's loaders are the usual approximation of it
(the same one as Opacus' ``make_private(..., poisson_sampling=False)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


def _require_opacus():  # noqa: ANN202
    try:
        import opacus  # noqa: F401
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError('DP-SGD needs Opacus: pip install -e ".[dp]" (or pip install opacus)') from None
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.optimizers import DPOptimizer

    return DPOptimizer, RDPAccountant, get_noise_multiplier


@dataclass
class DPConfig:
    """DP-SGD settings.

    Attributes:
        target_epsilon: Privacy budget epsilon over the whole run (the noise is calibrated to it);
            ignored when ``noise_multiplier`` is given. POST reports epsilon = 8.
        delta: The delta of (epsilon, delta)-DP; ``None``: the largest power of 10 strictly below
            ``1 / dataset_size`` (1e-3 for 480 examples, 1e-4 for 1,000).
        max_grad_norm: Per-example L2 clipping bound ``C``.
        noise_multiplier: Noise standard deviation over ``C``; ``None``: computed from ``target_epsilon``.
    """

    target_epsilon: float = 8.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        for name in ("target_epsilon", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name}={value!r} must be a finite number > 0")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta!r} must be in (0, 1)")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier={self.noise_multiplier!r} must be >= 0")


class DPPromptOptimizer:
    """An optimizer of prompt parameters that takes DP-SGD steps (Opacus) and tracks epsilon.

    Args:
        params: The prompt's parameters.
        optimizer: A torch optimizer over ``params`` (e.g. ``torch.optim.AdamW``), wrapped by Opacus.
        config: The DP settings.
        batch_size: Examples per step (Opacus' expected batch size).
        dataset_size: Private training examples (sets the sampling rate and the default delta).
        steps: Planned steps (calibrates the noise to ``target_epsilon``).

    Raises:
        ValueError: ``batch_size`` or ``steps`` < 1, or ``dataset_size`` < ``batch_size``.
        ImportError: Opacus is not installed.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer, config: DPConfig,
                 batch_size: int, dataset_size: int, steps: int) -> None:
        dp_optimizer, accountant, get_noise_multiplier = _require_opacus()
        for name, value in (("batch_size", batch_size), ("steps", steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if dataset_size < batch_size:
            raise ValueError(f"dataset_size={dataset_size!r} must be >= batch_size={batch_size}")
        self.params = [p for p in params if p.requires_grad]
        self.sample_rate = batch_size / dataset_size
        self.delta = config.delta if config.delta is not None else 10.0 ** -(math.floor(math.log10(dataset_size)) + 1)
        if config.noise_multiplier is None:
            self.noise_multiplier = get_noise_multiplier(target_epsilon=config.target_epsilon, target_delta=self.delta,
                                                         sample_rate=self.sample_rate, steps=steps, accountant="rdp")
        else:
            self.noise_multiplier = float(config.noise_multiplier)
        self.accountant = accountant()
        self.optimizer = dp_optimizer(optimizer, noise_multiplier=self.noise_multiplier,
                                      max_grad_norm=config.max_grad_norm, expected_batch_size=batch_size)
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))

    def step(self, example_loss: Callable[[int], torch.Tensor], batch_size: int) -> float:
        """One DP-SGD step over a batch.

        Args:
            example_loss: ``i -> `` the scalar loss of example ``i`` of the batch (its own graph).
            batch_size: Examples in this batch.

        Returns:
            The mean example loss (nats; a number, not private: for logging only).
        """
        per_example = [torch.zeros(batch_size, *p.shape, dtype=p.dtype, device=p.device) for p in self.params]
        total = 0.0
        for i in range(batch_size):
            loss = example_loss(i)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            for store, grad in zip(per_example, grads, strict=True):
                if grad is not None:
                    store[i] = grad
            total += loss.item()
        for p, grad_sample in zip(self.params, per_example, strict=True):
            p.grad_sample = grad_sample
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / batch_size

    def epsilon(self) -> float:
        """Epsilon spent so far at :attr:`delta` (RDP accountant)."""
        return float(self.accountant.get_epsilon(delta=self.delta))
