"""``SoftPromptModule``: train a soft prompt on a frozen causal LM with Lightning.

Thin wiring around :mod:`softtok.prompts`: the base model is loaded, frozen and kept in
eval mode (no dropout: the frozen model is a fixed function); the prompt is the only
trainable part. Loss is the mean cross-entropy of the answer tokens; validation and test
also decode greedily (KV cache, prompt injected at prefill) and report exact-match
accuracy of the extracted answer. Checkpoints hold the prompt weights only, plus the
method and shapes (``softtok_prompt``), so they are small, load with
``weights_only=True``, resume exactly and export to PEFT without the base model.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softtok.answers import check_answer, extract_answer
from softtok.prompts.base import mark_only_prompt_trainable, prompt_state_dict
from softtok.prompts.checkpoint import META_KEY, PREFIX, check_method, checkpoint_meta
from softtok.prompts.config import PromptConfig, PromptTuningConfig, config_from_dict, config_to_class_path
from softtok.prompts.generate import eos_ids, greedy_generate

MATCHES = ("extract", "exact")
# The (model, tokenizer) handed to `from_model`, read once by __init__ (keeps them out of the CLI's arguments).
_PRELOADED: ContextVar[tuple[PreTrainedModel, PreTrainedTokenizerBase] | None] = ContextVar("preloaded", default=None)


class SoftPromptModule(LightningModule):
    """Soft-prompt tuning (prompt tuning, prefix tuning or instruction-aware prompts).

    Args:
        prompt: The method and its settings (:class:`~softtok.prompts.PromptTuningConfig`,
            :class:`~softtok.prompts.PrefixTuningConfig`, :class:`~softtok.prompts.IAPTConfig`),
            or its ``to_dict()`` or ``class_path`` form.
        model: softtok model name (``"smollm2-135m"``), a local folder or a hub id.
        dtype: Base-model dtype (``"float32"``, ``"bf16"``...); the prompt stays fp32.
        lr: AdamW learning rate (prompt tuning likes large rates, 1e-2 to 3e-1).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps, then constant.
        max_new_tokens: Generation budget of validation/test/predict.
        match: ``"extract"``: extract the final answer (``softtok.answers.extract_answer``) and
            check it (the datamodule's scorer if it has one, else ``check_answer``).
            ``"exact"``: the whole stripped generation must equal the reference.

    Use :meth:`from_model` to wrap an already loaded model (research code, tests).

    Raises:
        ValueError: Bad values, before the model is loaded.
    """

    def __init__(
        self,
        prompt: PromptConfig | None = None,
        model: str = "smollm2-135m",
        dtype: str = "float32",
        lr: float = 3e-2,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        max_new_tokens: int = 16,
        match: str = "extract",
    ) -> None:
        super().__init__()
        prompt = PromptTuningConfig() if prompt is None else prompt
        if isinstance(prompt, dict):
            prompt = config_from_dict(prompt)
        if not isinstance(prompt, PromptConfig):
            raise ValueError(f"prompt must be a PromptConfig, got {type(prompt).__name__}")
        if not lr > 0:
            raise ValueError(f"lr={lr!r} must be > 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
        if int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps!r} must be an integer >= 0")
        if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
        if match not in MATCHES:
            raise ValueError(f"match={match!r} is not allowed; allowed: {', '.join(MATCHES)}")
        # Plain types only in hparams, so checkpoints load with weights_only=True; the CLI's
        # class_path form, so `softtok test --ckpt_path` parses them back into this config.
        self.save_hyperparameters(ignore=["prompt"])
        self.hparams["prompt"] = config_to_class_path(prompt)
        base_model = _PRELOADED.get()
        if base_model is None:
            from softtok.models import load_model

            base_model = load_model(model, dtype=dtype)
        self.model, self.tokenizer = base_model
        self.prompt_config = prompt
        self.prompt = prompt.build(self.model, self.tokenizer)
        mark_only_prompt_trainable(self.model, self.prompt)
        self.model.eval()
        self.model_name = model
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.max_new_tokens, self.match = max_new_tokens, match
        self.eos = eos_ids(self.model, self.tokenizer)
        # Missing base-model keys are expected when loading: checkpoints hold the prompt only.
        self.strict_loading = False
        self.val_em, self.test_em = MeanMetric(), MeanMetric()

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompt: PromptConfig | None = None,
        **kwargs: Any,
    ) -> SoftPromptModule:
        """Wrap an already loaded ``model`` / ``tokenizer`` instead of loading one by name.

        ``kwargs`` are the other constructor arguments; ``model`` in the hyperparameters
        becomes the model's ``name_or_path``.
        """
        token = _PRELOADED.set((model, tokenizer))
        try:
            return cls(prompt, model=kwargs.pop("model", model.name_or_path or "preloaded"), **kwargs)
        finally:
            _PRELOADED.reset(token)

    def train(self, mode: bool = True) -> SoftPromptModule:
        """Train mode for the prompt; the frozen base model stays in eval mode (no dropout)."""
        super().train(mode)
        self.model.eval()
        return self

    # ------------------------------------------------------------------ steps
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Answer-token loss of a batch."""
        return self.prompt.loss(self.model, input_ids, attention_mask, labels)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[str]:
        """Greedy answers (text) for left-padded prompts, with the soft prompt."""
        out = greedy_generate(self.model, prompt_ids, prompt_mask, prefill=self.prompt,
                              max_new_tokens=self.max_new_tokens, eos_token_ids=self.eos)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def _correct(self, batch: dict[str, Any], texts: list[str]) -> list[bool]:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        correct = []
        for i, text in enumerate(texts):
            if self.match == "exact":
                correct.append(text.strip() == str(batch["answers"][i]).strip())
                continue
            pred = extract_answer(text)
            if datamodule is not None and hasattr(datamodule, "score") and "records" in batch:
                split = batch.get("split", [""] * len(texts))[i]
                correct.append(bool(datamodule.score(batch["records"][i], pred, split)))
            else:
                correct.append(check_answer(pred, str(batch["answers"][i])))
        return correct

    def _evaluate(self, batch: dict[str, Any], stage: str, metric: MeanMetric) -> None:
        size = batch["input_ids"].shape[0]
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"])
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        correct = self._correct(batch, self.generate(batch["prompt_ids"], batch["prompt_mask"]))
        metric.update(torch.tensor(correct, dtype=torch.float32, device=self.device))
        self.log(f"{stage}/exact_match", metric, prog_bar=True, batch_size=size)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_em)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_em)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        texts = self.generate(batch["prompt_ids"], batch["prompt_mask"])
        correct = self._correct(batch, texts) if "answers" in batch else [None] * len(texts)
        return [{"question": r.get("question"), "answer": r.get("answer"), "prediction": t,
                 "extracted": extract_answer(t), "correct": c}
                for r, t, c in zip(batch.get("records", [{}] * len(texts)), texts, correct, strict=True)]

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.prompt.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        warmup = self.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the prompt weights, and record what they are."""
        checkpoint["state_dict"] = prompt_state_dict(checkpoint["state_dict"], PREFIX)
        checkpoint[META_KEY] = checkpoint_meta(self.prompt, self.model_name)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another method, another prompt shape, or one that lacks prompt weights."""
        if META_KEY not in checkpoint:
            raise ValueError(f"not a softtok soft-prompt checkpoint (no {META_KEY!r} entry)")
        check_method(checkpoint, self.prompt_config)
        expected = {PREFIX + k for k in self.prompt.state_dict()}
        found = {k for k in checkpoint["state_dict"] if k.startswith(PREFIX)}
        if expected != found:
            raise ValueError(f"checkpoint prompt weights {sorted(found)} != this prompt's {sorted(expected)}")
        for key, value in self.prompt.state_dict().items():
            theirs = tuple(checkpoint["state_dict"][PREFIX + key].shape)
            if theirs != tuple(value.shape):
                raise ValueError(f"checkpoint {PREFIX + key} has shape {theirs}, this prompt {tuple(value.shape)}")
