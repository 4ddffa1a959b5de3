"""DP-SGD for prompts (Opacus): clipping and averaging against hand computations, calibrated epsilon."""

import pytest
import torch
from tiny import tiny_model

from softtok.prompts import PromptTuningConfig

pytest.importorskip("opacus")
from softtok.prompts.private import DPConfig, DPPromptOptimizer  # noqa: E402


def setup(tokenizer, noise=0.0, clip=1e6, lr=0.1):
    model = tiny_model("llama").requires_grad_(False)
    torch.manual_seed(0)
    prompt = PromptTuningConfig(n_virtual=3, init="random").build(model, tokenizer)
    enc = tokenizer(["1+2=3", "4+4=8", "a b c"], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)

    def example_loss(i):
        return prompt.loss(model, enc["input_ids"][i:i + 1], enc["attention_mask"][i:i + 1], labels[i:i + 1])

    sgd = torch.optim.SGD(prompt.parameters(), lr=lr)
    dp = DPPromptOptimizer(prompt.parameters(), sgd, DPConfig(noise_multiplier=noise, max_grad_norm=clip),
                           batch_size=3, dataset_size=30, steps=10)
    return prompt, example_loss, dp


def per_example_grads(prompt, example_loss):
    return [torch.autograd.grad(example_loss(i), prompt.prompt_embeddings)[0] for i in range(3)]


@pytest.mark.parametrize("clip", [1e6, 0.01])
def test_step_is_clipped_mean_gradient_descent(tokenizer, clip):
    prompt, example_loss, dp = setup(tokenizer, clip=clip)
    before = prompt.prompt_embeddings.detach().clone()
    grads = per_example_grads(prompt, example_loss)
    clipped = [g * min(1.0, clip / (g.norm().item() + 1e-6)) for g in grads]
    expected = before - 0.1 * sum(clipped) / 3
    dp.step(example_loss, 3)
    torch.testing.assert_close(prompt.prompt_embeddings.detach(), expected, rtol=1e-5, atol=1e-7)
    assert prompt.prompt_embeddings.grad is None  # cleared for the next step


def test_noise_has_the_calibrated_scale_and_epsilon_is_tracked(tokenizer):
    prompt, example_loss, dp = setup(tokenizer, noise=2.0, clip=0.5, lr=1.0)
    before = prompt.prompt_embeddings.detach().clone()
    grads = per_example_grads(prompt, example_loss)
    mean = sum(g * min(1.0, 0.5 / (g.norm().item() + 1e-6)) for g in grads) / 3
    dp.step(example_loss, 3)
    noise = (before - prompt.prompt_embeddings.detach()) - mean  # lr 1: the step minus the clipped mean
    expected_std = 2.0 * 0.5 / 3  # sigma * C / B
    assert abs(noise.std().item() / expected_std - 1) < 0.15  # 3 x 64 draws
    assert dp.epsilon() > 0


def test_noise_is_calibrated_to_the_target_epsilon(tokenizer):
    model = tiny_model("llama")
    prompt = PromptTuningConfig(n_virtual=2, init="random").build(model, tokenizer)
    dp = DPPromptOptimizer(prompt.parameters(), torch.optim.SGD(prompt.parameters(), lr=0.1),
                           DPConfig(target_epsilon=4.0), batch_size=8, dataset_size=480, steps=60)
    assert dp.delta == 1e-3 and dp.noise_multiplier > 0
    for _ in range(60):  # the accountant alone (steps of zero loss): epsilon reaches the target, not beyond
        dp.step(lambda i: (prompt.prompt_embeddings * 0).sum(), 8)
    assert 3.6 < dp.epsilon() <= 4.01


def test_bad_settings():
    for kwargs, match in [({"target_epsilon": 0}, "target_epsilon"), ({"max_grad_norm": -1}, "max_grad_norm"),
                          ({"delta": 1.5}, "delta"), ({"noise_multiplier": -0.1}, "noise_multiplier"),
                          ({"max_grad_norm": float("inf")}, "finite"), ({"target_epsilon": float("inf")}, "finite")]:
        with pytest.raises(ValueError, match=match):
            DPConfig(**kwargs)
    param = torch.nn.Parameter(torch.zeros(2))
    # delta defaults strictly below 1 / n, also when n is a power of ten
    dp = DPPromptOptimizer([param], torch.optim.SGD([param], lr=1), DPConfig(), batch_size=8, dataset_size=1000,
                           steps=10)
    assert dp.delta == 1e-4
    with pytest.raises(ValueError, match="dataset_size"):
        DPPromptOptimizer([param], torch.optim.SGD([param], lr=1), DPConfig(), batch_size=8, dataset_size=4, steps=1)
