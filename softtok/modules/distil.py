"""``LayerDistillationModule``: a smaller model made from a large one, distilled on public text.

POST's small model (the model the prompt owner tunes locally) is distilled from the large
one. The student starts as the teacher with a subset of its decoder layers
(:func:`softtok.prompts.shrink.keep_layers`, by default every other layer, as DistilBERT),
then learns to match the teacher's next-token distribution on every real token of public
text: :func:`softtok.distill.kl_distillation` at ``T = 2`` (Hinton et al. 2015; DistilBERT
adds an MLM and a cosine term, left out here). The input embeddings and output head are
frozen by default (``train_embeddings: false``), so the student keeps the teacher's token
space and a prompt tuned on it can start the large model's prompt. Pair it with
:class:`~softtok.callbacks.SavePretrained` to write the student in Hugging Face format
(``configs/soft_prompt/distil_small.yaml``).

Checkpoints hold the student only (the teacher is reloaded from its name).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softtok.distill import kl_distillation
from softtok.models import load_model, resolve_dtype
from softtok.modules.optim import adamw_cosine, check_optimizer_settings
from softtok.prompts.shrink import keep_layers, resolve_keep

STUDENT = "lm."


class LayerDistillationModule(LightningModule):
    """Distil ``model`` into the copy of it that keeps the layers ``keep``.

    Args:
        model: The teacher (softtok name, folder or hub id).
        keep: ``"every_other"`` or the teacher layer indices the student keeps.
        dtype: Weight dtype of both models.
        lr: AdamW peak learning rate (linear warm-up, cosine to 0 at ``max_steps``).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        temperature: Distillation temperature (2, as DistilBERT and POST).
        train_embeddings: Also train the input embeddings / output head (``False`` keeps the teacher's).

    Attributes:
        lm: The student (what :class:`~softtok.callbacks.SavePretrained` writes).
        teacher: The frozen teacher (eval mode).

    Raises:
        ValueError: Bad values, before the teacher's weights are loaded where possible.
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        keep: str | Sequence[int] = "every_other",
        dtype: str = "float32",
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        temperature: float = 2.0,
        train_embeddings: bool = False,
    ) -> None:
        super().__init__()
        resolve_dtype(dtype)
        check_optimizer_settings(lr, weight_decay, warmup_steps)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be a number > 0")
        if not isinstance(train_embeddings, bool):
            raise ValueError(f"train_embeddings={train_embeddings!r} must be true or false")
        if isinstance(keep, str):
            resolve_keep(keep, 2)  # the name; indices are checked against the teacher once it is loaded
        self.save_hyperparameters()
        self.teacher, self._tokenizer = load_model(model, dtype=dtype)
        self.teacher.requires_grad_(False).eval()
        self.lm: PreTrainedModel = keep_layers(self.teacher, keep if isinstance(keep, str) else list(keep))
        self.lm.requires_grad_(True)
        if not train_embeddings:
            self.lm.get_input_embeddings().requires_grad_(False)
            self.lm.get_output_embeddings().requires_grad_(False)
        self.lm.generation_config.pad_token_id = self._tokenizer.pad_token_id
        self.temperature = temperature
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.val_kl = MeanMetric()
        self.strict_loading = False  # checkpoints hold the student only

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def train(self, mode: bool = True) -> LayerDistillationModule:
        """Train mode for the student; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """KL (nats, times ``T^2``) of the student to the teacher over the real tokens of a batch."""
        keep = attention_mask.bool()
        with torch.no_grad():
            teacher = self.teacher(input_ids=input_ids, attention_mask=attention_mask).logits[keep]
        student = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits[keep]
        return kl_distillation(student, teacher, self.temperature)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch["input_ids"], batch["attention_mask"])
        self.log("train/kl", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_kl.update(self(batch["input_ids"], batch["attention_mask"]), weight=batch["input_ids"].shape[0])
        self.log("val/kl", self.val_kl, prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self) -> dict[str, Any]:
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        params = [p for p in self.lm.parameters() if p.requires_grad]
        return adamw_cosine(params, self.lr, self.weight_decay, self.warmup_steps, total)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the student's weights only (the teacher is reloaded by name)."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(STUDENT)}
