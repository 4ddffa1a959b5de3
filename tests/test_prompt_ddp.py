"""Two CPU processes (ddp_spawn, gloo) compute the single-process gradient of the same global batch."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tiny import tiny_model

from softtok.data.instruct import InstructDataModule
from softtok.modules.soft_prompt import SoftPromptModule
from softtok.prompts import IAPTConfig


class GradRecorder(Callback):
    """Saves the prompt's (all-reduced) gradients of the first step, from rank 0."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0 and trainer.is_global_zero:
            torch.save({k: p.grad.detach().clone() for k, p in pl_module.prompt.named_parameters()}, self.path)


def first_step_grads(tokenizer, data_file, tmp_path, devices, batch_size):
    torch.manual_seed(0)
    # IAPT exercises every kind of prompt parameter: static embeddings and per-layer generators.
    config = IAPTConfig(n_virtual=2, init_text="ab", bottleneck=4)
    module = SoftPromptModule.from_model(tiny_model("llama"), tokenizer, config)
    with torch.no_grad():  # a nonzero up-projection, so every generator weight gets a gradient
        for gen in module.prompt.generators:
            gen.up.weight.normal_(0.0, 0.1)
    data = InstructDataModule(tokenizer=tokenizer, source="jsonl", train_file=data_file, batch_size=batch_size,
                              shuffle=False)
    path = str(tmp_path / f"grads{devices}.pt")
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[GradRecorder(path)],
                        default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=data)
    return torch.load(path)


@pytest.mark.slow
def test_ddp_gradients_equal_single_process(tokenizer, tmp_path):
    data_file = tmp_path / "train.jsonl"
    # Every answer has the same token count, so the mean over ranks equals the global token mean.
    rows = [{"instruction": f"{a}+{b}=", "answer": str(a + b)} for a, b in ((1, 2), (3, 4), (2, 2), (5, 3))]
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    single = first_step_grads(tokenizer, str(data_file), tmp_path, devices=1, batch_size=4)
    ddp = first_step_grads(tokenizer, str(data_file), tmp_path, devices=2, batch_size=2)
    assert set(single) == set(ddp)
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-6, rtol=1e-4, msg=key)
    assert any(g.abs().sum() > 0 for g in single.values())
