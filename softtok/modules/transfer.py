"""``PromptTransferModule`` and ``TransferDataModule``: POST prompt transfer with Lightning.

Thin wiring around :mod:`softtok.prompts.transfer`. The module is a
:class:`~softtok.modules.soft_prompt.SoftPromptModule` for the large model L (same prompt
config, optimiser, prompt-only checkpoints, PEFT export, test-time task accuracy) whose
training and validation steps use the transfer loss against the small model S with its
tuned prompt, on **public** data:

* ``training_step``: :func:`~softtok.prompts.transfer.transfer_loss` on a public batch;
* ``validation_step``: the same loss on the held-out public split, logged as
  ``val/transfer_loss``: the checkpoint-selection metric (``ModelCheckpoint(monitor=...)``);
* ``test_step``: greedy decoding and exact match on the private task (inherited), for the
  results page only; nothing is selected on it.

:class:`TransferDataModule` enforces the split: training and validation batches come from
its ``public`` datamodule, test and predict batches from ``task``; it never asks the
task for training or validation batches (a reasoning-gym task still generates its training
questions, only to keep them out of its test split).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softtok.data.instruct import InstructDataModule
from softtok.modules.soft_prompt import _PRELOADED, SoftPromptModule
from softtok.prompts._arch import ModelInfo
from softtok.prompts.base import SoftPrompt
from softtok.prompts.config import PromptConfig
from softtok.prompts.transfer import (
    check_same_tokenizer,
    check_transfer_options,
    feature_mask,
    load_prompt,
    transfer_loss,
)

# The source (model, tokenizer, prompt) handed to `from_model`, read once by __init__.
_SOURCE: ContextVar[tuple[PreTrainedModel, PreTrainedTokenizerBase, SoftPrompt] | None] = ContextVar(
    "source", default=None)


class PromptTransferModule(SoftPromptModule):
    """Train the large model's prompt to reproduce the small model's prompted outputs (POST).

    Args:
        prompt: The target prompt's method and settings (as :class:`SoftPromptModule`).
        model: The large model L (softtok name, folder or hub id).
        source_model: The small model S, sharing L's tokenizer.
        source_prompt: S's tuned prompt: a softtok ``.ckpt`` or a PEFT adapter folder.
        dtype: Weight dtype of both models.
        lr: Adam(W) learning rate of the target prompt.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        max_new_tokens: Greedy budget of test/predict decoding on the task.
        match: Task scoring (as :class:`SoftPromptModule`).
        loss: ``"kl"`` (default, at ``temperature``) or ``"mse"``.
        temperature: KL temperature (2, POST).
        variant: ``"absolute"`` or ``"shift"``.
        positions: ``"all"``, ``"answer"`` or ``"last"`` (see :func:`~softtok.prompts.transfer.feature_mask`).
        features: ``"logits"`` (next-token logits) or ``"hidden"`` (last hidden state).
        init_from_source: Start the target prompt from the source prompt's weights (needs the
            same method and shapes, e.g. a small model made by :func:`~softtok.prompts.shrink.keep_layers`);
            ``False``: the ``prompt`` config's own initialisation.

    Raises:
        ValueError: Bad options, tokenizers that differ, a source prompt built for another
            model shape, or ``init_from_source`` with prompts of different shapes; all before
            any training.
        FileNotFoundError: No prompt at ``source_prompt``.
    """

    def __init__(
        self,
        prompt: PromptConfig | None = None,
        model: str = "smollm2-135m",
        source_model: str = "",
        source_prompt: str = "",
        dtype: str = "float32",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        max_new_tokens: int = 16,
        match: str = "extract",
        loss: str = "kl",
        temperature: float = 2.0,
        variant: str = "absolute",
        positions: str = "all",
        features: str = "logits",
        init_from_source: bool = True,
    ) -> None:
        check_transfer_options(loss, temperature, variant, positions, features)
        if not isinstance(init_from_source, bool):
            raise ValueError(f"init_from_source={init_from_source!r} must be true or false")
        source = _SOURCE.get()
        if source is None:
            if not source_model or not source_prompt:
                raise ValueError("prompt transfer needs source_model (the small model) and source_prompt "
                                 f"(its tuned prompt); got source_model={source_model!r}, "
                                 f"source_prompt={source_prompt!r}")
            from softtok.models import load_tokenizer

            check_same_tokenizer(load_tokenizer(source_model), load_tokenizer(model))  # before loading weights
        else:
            source[2].info.check_compatible(ModelInfo.from_model(source[0]), "the source prompt")
            if _PRELOADED.get() is not None:
                check_same_tokenizer(source[1], _PRELOADED.get()[1])
        super().__init__(prompt, model=model, dtype=dtype, lr=lr, weight_decay=weight_decay,
                         warmup_steps=warmup_steps, max_new_tokens=max_new_tokens, match=match)
        if source is None:
            from softtok.models import load_model

            source_lm, source_tokenizer = load_model(source_model, dtype=dtype)
            source_soft = load_prompt(source_prompt, source_lm)
        else:
            source_lm, _, source_soft = source
        self.source_model = source_lm.requires_grad_(False).eval()
        self.source_prompt = source_soft.requires_grad_(False)
        if init_from_source:
            self._init_from(source_soft)
        self.options = {"loss": loss, "temperature": temperature, "variant": variant, "positions": positions,
                        "features_kind": features}
        self.val_transfer = MeanMetric()

    def _init_from(self, source: SoftPrompt) -> None:
        theirs, mine = source.state_dict(), self.prompt.state_dict()
        shapes = {k: tuple(v.shape) for k, v in theirs.items()}
        if source.method != self.prompt.method or shapes != {k: tuple(v.shape) for k, v in mine.items()}:
            raise ValueError(
                f"init_from_source needs the same prompt method and shapes, but the source prompt is a "
                f"{source.method} prompt with {shapes} and the target a {self.prompt.method} prompt with "
                f"{ {k: tuple(v.shape) for k, v in mine.items()} }; set init_from_source: false")
        with torch.no_grad():
            for key, value in theirs.items():
                mine[key].copy_(value)

    @classmethod
    def from_models(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        source_model: PreTrainedModel,
        source_tokenizer: PreTrainedTokenizerBase,
        source_prompt: SoftPrompt,
        prompt: PromptConfig | None = None,
        **kwargs: Any,
    ) -> PromptTransferModule:
        """Wrap already loaded models and a source prompt object (research code, tests)."""
        token = _SOURCE.set((source_model, source_tokenizer, source_prompt))
        try:
            kwargs.setdefault("source_model", source_model.name_or_path or "preloaded")
            kwargs.setdefault("source_prompt", "preloaded")
            return cls.from_model(model, tokenizer, prompt, **kwargs)
        finally:
            _SOURCE.reset(token)

    def train(self, mode: bool = True) -> PromptTransferModule:
        """Train mode for the target prompt only: both models stay in eval mode."""
        super().train(mode)
        if "source_model" in self._modules:
            self.source_model.eval()
        return self

    def transfer_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The transfer loss of a public batch."""
        return transfer_loss(self.model, self.prompt, self.source_model, self.source_prompt, batch["input_ids"],
                             batch["attention_mask"], batch.get("labels"), **self.options)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.transfer_loss(batch)
        self.log("train/transfer_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Held-out **public** transfer loss: the selection metric (no task data, no decoding)."""
        size = batch["input_ids"].shape[0]
        positions = feature_mask(batch["attention_mask"], batch.get("labels"), self.options["positions"]).sum()
        self.val_transfer.update(self.transfer_loss(batch), weight=positions)  # the mean over every position
        self.log("val/transfer_loss", self.val_transfer, prog_bar=True, batch_size=size)


class TransferDataModule(LightningDataModule):
    """Public data for training and selection, the private task for testing only.

    Args:
        public: Public instruction data (its ``train`` and ``val`` splits are used).
        task: The private task (its ``test`` split only; ``None`` when there is no test).

    Raises:
        ValueError: The two datamodules use different tokenizers.
    """

    def __init__(self, public: InstructDataModule, task: InstructDataModule | None = None) -> None:
        super().__init__()
        if task is not None and public.tokenizer_source != task.tokenizer_source:
            raise ValueError(f"public and task data must use one tokenizer, got {public.tokenizer_source!r} and "
                             f"{task.tokenizer_source!r}")
        self.public, self.task = public, task

    def setup(self, stage: str | None = None) -> None:
        for module in (self.public, self.task):
            if module is not None:
                module.trainer = self.trainer

    def train_dataloader(self) -> DataLoader:
        return self.public.train_dataloader()

    def val_dataloader(self) -> DataLoader:
        return self.public.val_dataloader()

    def _task(self) -> InstructDataModule:
        if self.task is None:
            raise ValueError("no task datamodule: set data.task to test or predict on the private task")
        return self.task

    def test_dataloader(self) -> DataLoader:
        return self._task().test_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._task().predict_dataloader()

    def score(self, record: dict[str, Any], prediction: str | None, split: str = "") -> bool:
        """The task's scorer (test records come from the task)."""
        return self._task().score(record, prediction, split)
