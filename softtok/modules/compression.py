"""``CompressionModule``: train a CompLLM-style segment compressor on a frozen causal LM with Lightning.

Thin wiring around :mod:`softtok.compression`: the base model is loaded, frozen and kept in
eval mode; the compressor (LoRA + head) is the only trainable part. The training loss is
the answer-token distillation of :func:`softtok.compression.train.distillation_loss`;
validation and test also decode greedily with the context compressed (through the
prefill contract) and report answer accuracy (the datamodule's ``score``, e.g.
:func:`softtok.data.long_context.answer_correct`). Checkpoints hold the compressor's weights
only (``compressor.*``) plus its config and the model's shapes (``softtok_compressor``);
``export_dir`` receives :meth:`~softtok.compression.SegmentCompressor.save` at the end of fit.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softtok.compression import CompressionConfig, SegmentCompressor, distillation_loss
from softtok.data.long_context import answer_correct
from softtok.prompts.generate import eos_ids, greedy_generate

META_KEY = "softtok_compressor"
PREFIX = "compressor."
_PRELOADED: ContextVar[tuple[PreTrainedModel, PreTrainedTokenizerBase] | None] = ContextVar(
    "preloaded_compression", default=None)


class CompressionModule(LightningModule):
    """Train a segment compressor by distillation; evaluate answers with the context compressed.

    Args:
        compression: :class:`~softtok.compression.CompressionConfig` or its ``to_dict()`` form.
        model: softtok model name (``"smollm2-135m"``), a local folder or a hub id.
        dtype: Base-model dtype (``"float32"``, ``"bf16"``...).
        lr: AdamW learning rate of LoRA + head.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps, then constant.
        max_new_tokens: Generation budget of validation/test answers.
        export_dir: Folder that receives the trained compressor (``compressor.save``) at the
            end of fit; ``None``: no export.

    Raises:
        ValueError: Bad values, before the model is loaded.
    """

    def __init__(
        self,
        compression: CompressionConfig | dict[str, Any] | None = None,
        model: str = "smollm2-135m",
        dtype: str = "float32",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        max_new_tokens: int = 12,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        config = CompressionConfig() if compression is None else compression
        if isinstance(config, dict):
            config = CompressionConfig.from_dict(config)
        if not isinstance(config, CompressionConfig):
            raise ValueError(f"compression must be a CompressionConfig or dict, got {type(config).__name__}")
        if not lr > 0:
            raise ValueError(f"lr={lr!r} must be > 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps!r} must be an integer >= 0")
        if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
        self.save_hyperparameters(ignore=["compression"])
        self.hparams["compression"] = config.to_dict()
        base = _PRELOADED.get()
        if base is None:
            from softtok.models import load_model

            base = load_model(model, dtype=dtype)
        self.model, self.tokenizer = base
        self.compression_config = config
        self.compressor = SegmentCompressor(config, self.model)
        self.model.eval()
        self.model_name = model
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.max_new_tokens, self.export_dir = max_new_tokens, export_dir
        self.eos = eos_ids(self.model, self.tokenizer)
        self.strict_loading = False  # checkpoints hold the compressor only
        self.val_acc, self.test_acc = MeanMetric(), MeanMetric()

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   compression: CompressionConfig | dict[str, Any] | None = None, **kwargs: Any) -> CompressionModule:
        """Wrap an already loaded ``model`` / ``tokenizer`` (research code, tests); ``kwargs`` as the constructor."""
        token = _PRELOADED.set((model, tokenizer))
        try:
            return cls(compression, model=kwargs.pop("model", model.name_or_path or "preloaded"), **kwargs)
        finally:
            _PRELOADED.reset(token)

    def train(self, mode: bool = True) -> CompressionModule:
        """Train mode for the compressor (LoRA dropout); the frozen base model stays in eval mode."""
        super().train(mode)
        self.model.eval()
        self.compressor.train(mode)  # after model.eval(): the LoRA modules live inside the model too
        return self

    # ------------------------------------------------------------------ steps
    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Distillation loss of a batch."""
        return distillation_loss(self.compressor, self.model, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, context_mask: torch.Tensor) -> list[str]:
        """Greedy answers with each row's context span compressed."""
        out = greedy_generate(self.model, prompt_ids, prompt_mask, prefill=self.compressor.prefill(context_mask),
                              max_new_tokens=self.max_new_tokens, eos_token_ids=self.eos)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def _evaluate(self, batch: dict[str, Any], stage: str, metric: MeanMetric) -> None:
        size = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", self(batch), prog_bar=True, batch_size=size, sync_dist=True)
        texts = self.generate(batch["prompt_ids"], batch["prompt_mask"], batch["prompt_context_mask"])
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        score = getattr(datamodule, "score", None)
        correct = [score(r, t) if score is not None else answer_correct(t, r["answer"])
                   for r, t in zip(batch["records"], texts, strict=True)]
        metric.update(torch.tensor(correct, dtype=torch.float32, device=self.device))
        self.log(f"{stage}/accuracy", metric, prog_bar=True, batch_size=size)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.compressor.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        warmup = self.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_end(self) -> None:
        """Export the trained compressor (``export_dir``), from rank 0."""
        if self.export_dir and self.trainer.is_global_zero:
            self.compressor.save(self.export_dir)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the compressor's weights, and record its config and the model's shapes."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(PREFIX)}
        checkpoint[META_KEY] = {"config": self.compression_config.to_dict(),
                                "model": self.compressor.info.to_dict(), "model_name": self.model_name}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another compressor config or one without the compressor's weights."""
        if META_KEY not in checkpoint:
            raise ValueError(f"not a softtok compressor checkpoint (no {META_KEY!r} entry)")
        theirs = checkpoint[META_KEY]["config"]
        if theirs != self.compression_config.to_dict():
            raise ValueError(f"checkpoint compressor config {theirs} != this module's "
                             f"{self.compression_config.to_dict()}")
        expected = {PREFIX + k for k in self.compressor.state_dict()}
        found = {k for k in checkpoint["state_dict"] if k.startswith(PREFIX)}
        if expected != found:
            raise ValueError(f"checkpoint compressor weights differ from this compressor's: "
                             f"{sorted(expected ^ found)[:6]}")
