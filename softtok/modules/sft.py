"""``SFTModule``: supervised training on worked solutions (a tiny model from scratch, or fine-tuning).

Trains the in-repo reasoning model of the continuous-CoT results
(``configs/continuous_cot/pretrain_tiny.yaml``): a GPT-2-shaped model built from
``architecture`` with the character tokenizer of :mod:`softtok.tiny`, trained on
:class:`~softtok.data.InstructDataModule` batches with ``target: solution`` (the loss is the
cross-entropy of the worked solution and EOS; the prompt carries no loss), then saved in
Hugging Face format by the recipe's :class:`~softtok.callbacks.SavePretrained`
(``tiny-reasoner``, under ``$SOFTTOK_CACHE``), where the name loads it everywhere else.
With ``architecture: null`` it loads ``model`` instead, so ``softtok validate`` of this
module measures any model's NLL on any task's worked solutions (the out-of-domain check of
the results page).

Validation logs ``val/nll`` (nats per target token, summed over the whole split, so
batches of different lengths weigh by their tokens) and ``val/accuracy``: greedy decoding of
the chain of thought until ``think_end``, then the answer, through the same generator as
the RL evaluation (``hard_greedy``).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torchmetrics import MeanMetric, SumMetric
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from softtok.answers import extract_answer
from softtok.generation import SoftThinkingGenerator
from softtok.generation.generator import encode_think_end
from softtok.models import load_model, load_tokenizer, resolve_dtype
from softtok.modules.optim import adamw_cosine, check_optimizer_settings
from softtok.rl.rollout import RolloutConfig
from softtok.tiny import THINK_END, tiny_config


class SFTModule(LightningModule):
    """Supervised training on worked solutions, loss on the target tokens only.

    Args:
        model: The model (softtok name, folder or hub id). With ``architecture``, only its
            tokenizer is used (``tiny-reasoner``: the character tokenizer of :mod:`softtok.tiny`,
            which exists before training) and the weights are new; else the model is loaded and fine-tuned.
        architecture: A new model's ``model_type`` and config fields (e.g. ``{"model_type":
            "gpt2", "n_embd": 192, "n_layer": 4, ...}``, see :data:`softtok.tiny.TINY_ARCHITECTURE`
            and :func:`softtok.tiny.tiny_config`); ``None``: load ``model``'s weights.
        dtype: Weight dtype.
        lr: AdamW peak learning rate (linear warm-up, then cosine to 0 at ``max_steps``).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        think_end: The string that ends the chain of thought in validation decoding.
        max_think_tokens: Chain-of-thought budget of validation decoding, in tokens.
        max_answer_tokens: Answer budget of validation decoding, in tokens.

    Raises:
        ValueError: Bad values (before any model work); a ``think_end`` the tokenizer cannot encode.
    """

    def __init__(
        self,
        model: str = "tiny-reasoner",
        architecture: dict[str, Any] | None = None,
        dtype: str = "float32",
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 20,
        think_end: str = THINK_END,
        max_think_tokens: int = 48,
        max_answer_tokens: int = 8,
    ) -> None:
        super().__init__()
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r} must be a non-empty name, folder or hub id")
        resolve_dtype(dtype)
        check_optimizer_settings(lr, weight_decay, warmup_steps)
        self.generation = RolloutConfig(mode="hard", think_end=think_end, max_think_tokens=max_think_tokens,
                                        max_answer_tokens=max_answer_tokens, stop_strings=("\n",)
                                        ).eval_generation_config("hard_greedy")  # validates budgets, think_end
        tokenizer = load_tokenizer(model)
        try:
            encode_think_end(tokenizer, think_end)
        except ValueError as err:
            raise ValueError(f"model={model!r}: {err}") from None
        self.config = tiny_config(tokenizer, architecture) if architecture is not None else None
        self.save_hyperparameters()
        self.model_name, self.dtype_name = model, dtype
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self._tokenizer: PreTrainedTokenizerBase = tokenizer
        self.nll_sum, self.nll_tokens, self.accuracy = SumMetric(), SumMetric(), MeanMetric()

    def configure_model(self) -> None:
        """Build the new model (after ``seed_everything``, so its initial weights follow the seed) or load it."""
        if "lm" in self._modules:
            return
        if self.config is not None:
            lm = AutoModelForCausalLM.from_config(self.config, dtype=resolve_dtype(self.dtype_name))
        else:
            lm, self._tokenizer = load_model(self.model_name, dtype=self.dtype_name, tokenizer=self._tokenizer)
        lm.generation_config.pad_token_id = self._tokenizer.pad_token_id
        self.lm: PreTrainedModel = lm

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed target-token NLL (nats) and the number of target tokens of a batch."""
        logits = self.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, reduction="sum")
        return nll, (labels != -100).sum()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        nll, tokens = self(batch)
        loss = nll / tokens
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["records"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        nll, tokens = self(batch)
        self.nll_sum.update(nll)
        self.nll_tokens.update(tokens)
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"],
                                                                    strict=True)]
        generator = SoftThinkingGenerator(self.lm, self.tokenizer, self.generation)
        results = generator.generate(prompts, seeds=list(range(len(prompts))))
        datamodule = self.trainer.datamodule
        for record, result, split in zip(batch["records"], results, batch["split"], strict=True):
            prediction = extract_answer(result.thinking + result.answer)
            self.accuracy.update(float(datamodule.score(record, prediction, split=split)))

    def on_validation_epoch_end(self) -> None:
        tokens = self.nll_tokens.compute()
        self.log("val/nll", self.nll_sum.compute() / tokens.clamp(min=1))
        self.log("val/accuracy", self.accuracy.compute())
        for metric in (self.nll_sum, self.nll_tokens, self.accuracy):
            metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (betas 0.9 / 0.95), linear warm-up then cosine to 0 at ``max_steps``."""
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        return adamw_cosine(self.lm.parameters(), self.lr, self.weight_decay, self.warmup_steps, total,
                            betas=(0.9, 0.95))
