"""``SoftThinkingModule``: the Soft Thinking generator as a LightningModule (predict and test).

Thin by design: it formats prompts with the chat template, calls
:class:`~softtok.generation.SoftThinkingGenerator`, scores the answers and feeds the
metrics. Everything method-specific lives in :mod:`softtok.soft` and :mod:`softtok.generation`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import LightningModule

from softtok.answers import check_answer, extract_answer
from softtok.generation import GenerationConfig, GenerationResult, SoftThinkingGenerator
from softtok.metrics import SoftThinkingMetrics
from softtok.models import DEFAULT_MODEL, load_model

#: The system prompt for chat models without thinking markers (SmolLM2), reasoning first,
#: then a ``Final answer:`` line, which is the default ``think_end`` of the recipes.
DEFAULT_SYSTEM_PROMPT = "Solve the problem. Think step by step, then end with a line 'Final answer: <answer>'."


class SoftThinkingModule(LightningModule):
    """Soft Thinking inference on reasoning problems.

    ``predict_step`` returns one JSON-ready record per (problem, sample); ``test_step``
    also updates accuracy, pass@k, token counts, entropy and the Cold Stop rate, logged at
    the end of the test epoch.

    Args:
        model: Model name or path (see :func:`softtok.models.load_model`).
        generation: Generation settings (mode, filters, think end, budgets...).
        system_prompt: System message put before each question (``None`` for none).
        dtype: Model weight dtype.
        pass_k: The k of the pass@k metrics (each needs ``n_samples >= k`` in the data).
        keep_trace: Put the entropy trace and the top-k ids/weights in the records.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        generation: GenerationConfig = GenerationConfig(think_end="Final answer:"),  # noqa: B008 (frozen)
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        dtype: str = "float32",
        pass_k: list[int] | None = None,
        keep_trace: bool = False,
    ) -> None:
        super().__init__()
        self.generation = generation
        self.metrics = SoftThinkingMetrics(ks=tuple(pass_k or [1]))
        self.system_prompt = system_prompt
        self.keep_trace = keep_trace
        self.lm, self.tokenizer = load_model(model, dtype=dtype)
        self.lm.requires_grad_(False)
        self.generator = SoftThinkingGenerator(self.lm, self.tokenizer, self.generation)
        self.skip: set[tuple[int, int]] = set()  # (index, sample) already done, set when resuming

    def format_prompt(self, question: str) -> str:
        """The chat-formatted prompt for one question."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": question})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def score(self, record: dict[str, Any], prediction: str | None) -> bool:
        """Check a prediction with the datamodule's scorer when it has one, else math-verify."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "score"):
            return datamodule.score(record, prediction)
        return check_answer(prediction, record["answer"])

    def to_record(self, record: dict[str, Any], result: GenerationResult, seconds: float) -> dict[str, Any]:
        """The output line of one (problem, sample)."""
        prediction = extract_answer(result.thinking + result.answer)
        out = {
            "index": record["index"],
            "sample": record.get("sample", 0),
            "task": record.get("task"),
            "question": record["question"],
            "reference": record["answer"],
            "prediction": prediction,
            "correct": self.score(record, prediction),
            "thinking": result.thinking,
            "answer": result.answer,
            "think_tokens": result.think_tokens,
            "answer_tokens": result.answer_tokens,
            "think_end": result.think_end,
            "mean_entropy": sum(result.entropy) / len(result.entropy) if result.entropy else None,
            "js_top1": result.js_top1,
            "js_top2": result.js_top2,
            "batch_seconds": seconds,
        }
        if self.keep_trace:
            out.update(entropy=result.entropy, topk_ids=result.topk_ids, topk_weights=result.topk_weights)
        return out

    def run(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Generate and score a batch of records (skipping those already done)."""
        batch = [r for r in batch if (r["index"], r.get("sample", 0)) not in self.skip]
        if not batch:
            return []
        start = time.perf_counter()
        results = self.generator.generate([self.format_prompt(r["question"]) for r in batch])
        seconds = time.perf_counter() - start
        return [self.to_record(r, res, seconds) for r, res in zip(batch, results, strict=True)]

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int = 0) -> list[dict[str, Any]]:
        return self.run(batch)

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int = 0) -> None:
        records = self.run(batch)
        self.metrics.update([{**r, "problem": r["index"]} for r in records])

    def on_test_epoch_end(self) -> None:
        for name, value in self.metrics.compute().items():
            self.log(name, float(value), sync_dist=False, rank_zero_only=True)
        self.metrics.reset()

    def configure_optimizers(self) -> None:
        return None

    @torch.no_grad()
    def forward(self, questions: list[str]) -> list[GenerationResult]:
        """Generate for raw questions (chat template and system prompt applied)."""
        return self.generator.generate([self.format_prompt(q) for q in questions])
