"""``SoftThinkingModule``: the Soft Thinking generator as a LightningModule (predict and test).

Thin by design: it formats prompts with the chat template, calls
:class:`~softtok.generation.SoftThinkingGenerator`, scores the answers and feeds the
metrics. Everything method-specific lives in :mod:`softtok.soft` and :mod:`softtok.generation`.

Every setting is checked when the module is built, and the model is loaded only later,
in :meth:`SoftThinkingModule.setup` (or on first use from Python), so that a bad value
anywhere in a config (module, data, writer) fails in seconds, before the weights load.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softtok.answers import check_answer, extract_answer
from softtok.generation import GenerationConfig, GenerationResult, SoftThinkingGenerator
from softtok.generation.generator import encode_think_end
from softtok.metrics import SoftThinkingMetrics
from softtok.metrics.passk import validate_ks
from softtok.models import DEFAULT_MODEL, load_model, load_tokenizer, model_fingerprint, resolve_dtype
from softtok.soft.random import row_seed

#: The system prompt for chat models without thinking markers (SmolLM2), reasoning first,
#: then a ``Final answer:`` line, which is the default ``think_end`` of the recipes.
DEFAULT_SYSTEM_PROMPT = "Solve the problem. Think step by step, then end with a line 'Final answer: <answer>'."

#: Generation settings that change how fast records are made, not what they hold.
ENGINE_SETTINGS = ("compile", "cache", "max_cache_len", "sync_every", "compact")

#: Stages whose metrics include pass@k (and so need ``n_samples >= k``).
_METRIC_STAGES = ("test", "validate")


class SoftThinkingModule(LightningModule):
    """Soft Thinking inference on reasoning problems.

    ``predict_step`` returns one JSON-ready record per (problem, sample); ``test_step``
    also updates accuracy, pass@k, token counts, entropy and the Cold Stop rate, logged at
    the end of the test epoch.

    The settings are validated at construction; the model and tokenizer are loaded in
    :meth:`setup` (by the Trainer, after ``pass_k`` has been checked against the data's
    ``n_samples``) or on first use of :attr:`lm`, :attr:`tokenizer`, :attr:`generator`,
    :meth:`run` or ``forward``. The tokenizer is loaded first, so a ``think_end`` it
    cannot encode, or a chat template that rejects the system prompt, fails before the
    weights load.

    Args:
        model: Model name or path (see :func:`softtok.models.load_model`).
        generation: Generation settings (mode, filters, think end, budgets...); a
            :class:`~softtok.generation.GenerationConfig` or a dict of its fields.
        system_prompt: System message put before each question (``None`` for none).
        dtype: Model weight dtype.
        pass_k: The k of the pass@k metrics (each needs ``n_samples >= k`` in the data;
            ``None``: ``[1]``).
        keep_trace: Put the entropy trace and the top-k ids/weights in the records.

    Raises:
        ValueError: For a bad ``generation`` field, ``dtype``, ``pass_k`` or an empty
            ``model``; in :meth:`setup`, for ``pass_k`` above the data's ``n_samples``
            (test / validate) or a ``think_end`` / system prompt the tokenizer cannot take.
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
        if isinstance(generation, Mapping):
            generation = GenerationConfig(**generation)  # validates every field
        if not isinstance(generation, GenerationConfig):
            raise ValueError(f"generation={generation!r} must be a GenerationConfig or a dict of its fields")
        model = os.fspath(model) if isinstance(model, os.PathLike) else model
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r} must be a non-empty name: 'smollm2-135m', a local folder or a hub id")
        resolve_dtype(dtype)  # raises naming the allowed dtypes
        try:
            self.pass_k = validate_ks([1] if pass_k is None else pass_k)
        except ValueError:
            raise ValueError(f"pass_k={pass_k!r} must be a non-empty list of integers >= 1, e.g. [1, 4]") from None
        self.model_name = model
        self.dtype_name = dtype
        self.generation = generation
        self.metrics = SoftThinkingMetrics(ks=self.pass_k)
        self.system_prompt = system_prompt
        self.keep_trace = keep_trace
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._generator: SoftThinkingGenerator | None = None
        self.skip: set[tuple[int, int]] = set()  # (index, sample) already done, set when resuming

    # ------------------------------------------------------------------ loading
    def check_pass_k(self, n_samples: int) -> None:
        """Raise unless every ``pass_k`` value can be estimated from ``n_samples`` samples per problem."""
        if max(self.pass_k) > n_samples:
            raise ValueError(
                f"pass_k={list(self.pass_k)} needs n_samples >= {max(self.pass_k)} samples per problem, but the "
                f"data has n_samples={n_samples}; allowed: pass_k values <= {n_samples}, or raise "
                f"data.init_args.n_samples to >= {max(self.pass_k)}"
            )

    def setup(self, stage: str) -> None:
        """Check ``pass_k`` against the datamodule's ``n_samples`` (test / validate), then load the model."""
        datamodule = getattr(self.trainer, "datamodule", None)
        n_samples = getattr(datamodule, "n_samples", None)
        if stage in _METRIC_STAGES and isinstance(n_samples, int):
            self.check_pass_k(n_samples)
        self.load()

    def load(self) -> None:
        """Load the tokenizer (checking ``think_end`` and the chat template), then the model; once."""
        if self._generator is not None:
            return
        tokenizer = load_tokenizer(self.model_name)
        self._check_tokenizer(tokenizer)
        lm, tokenizer = load_model(self.model_name, dtype=self.dtype_name, tokenizer=tokenizer)
        lm = self.prepare_lm(lm)
        self._modules["lm"] = lm  # a submodule (moved to the device, in state_dict); read through the property
        self._tokenizer = tokenizer
        self._generator = SoftThinkingGenerator(lm, tokenizer, self.generation)

    def prepare_lm(self, lm: PreTrainedModel) -> PreTrainedModel:
        """What is done to the loaded model before use: here, freeze it (inference only)."""
        return lm.requires_grad_(False)

    def _check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """The checks that need only the tokenizer, run before the weights load."""
        try:
            encode_think_end(tokenizer, self.generation.think_end)
        except ValueError as err:
            raise ValueError(f"model={self.model_name!r}: {err}") from None
        try:
            self._format(tokenizer, "1 + 1 =")
        except Exception as err:  # noqa: BLE001 - chat templates raise anything (jinja, ValueError...)
            raise ValueError(
                f"the chat template of model={self.model_name!r} cannot format a prompt with "
                f"system_prompt={self.system_prompt!r}: {err}. Set system_prompt: null, or use a chat model"
            ) from err

    @property
    def lm(self) -> PreTrainedModel:
        """The causal LM (loaded on first use)."""
        self.load()
        return self._modules["lm"]

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """Its tokenizer (loaded on first use)."""
        self.load()
        return self._tokenizer

    @property
    def generator(self) -> SoftThinkingGenerator:
        """The :class:`~softtok.generation.SoftThinkingGenerator` (built on first use)."""
        self.load()
        return self._generator

    @property
    def base_seed(self) -> int:
        """The run's seed: ``seed_everything``'s (``PL_GLOBAL_SEED``), else torch's initial seed.

        Each (problem, sample) draws from its own stream, ``row_seed(base_seed, index,
        sample)``, so its record does not depend on its batch, on resuming, or on how many
        processes share the work.
        """
        return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))

    def record_settings(self) -> dict[str, Any]:
        """The settings that determine the prediction records (for :class:`~softtok.callbacks.JsonlPredictionWriter`).

        ``pass_k`` and the engine settings (``compile``, ``cache``, ``sync_every``...) are left out:
        they do not change the records. The
        model is identified by :func:`~softtok.models.model_fingerprint` (a local folder by
        its weights, so retraining into the same folder is another model).
        """
        generation = {k: v for k, v in dataclasses.asdict(self.predict_generation()).items()
                      if k not in ENGINE_SETTINGS}
        return {
            "model": model_fingerprint(self.model_name),
            "dtype": str(resolve_dtype(self.dtype_name)),
            "system_prompt": self.system_prompt,
            "keep_trace": self.keep_trace,
            "generation": generation,
            "seed": self.base_seed,
        }

    def predict_generation(self) -> GenerationConfig:
        """The generation settings of ``predict`` (here :attr:`generation`)."""
        return self.generation

    # -------------------------------------------------------------- generation
    def _format(self, tokenizer: PreTrainedTokenizerBase, question: str) -> str:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def format_prompt(self, question: str) -> str:
        """The chat-formatted prompt for one question."""
        return self._format(self.tokenizer, question)

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
            "seed": result.seed,
            "batch_seconds": seconds,
        }
        if result.latent is not None:  # SwiReasoning: how much of the thinking was latent, in which segments
            out.update(latent_fraction=result.latent_fraction, switch_count=result.switch_count,
                       latent_segments=result.latent_segments)
        if self.keep_trace:
            out.update(entropy=result.entropy, topk_ids=result.topk_ids, topk_weights=result.topk_weights)
            if result.latent is not None:
                out["latent"] = result.latent
        return out

    def run(self, batch: list[dict[str, Any]], generator: SoftThinkingGenerator | None = None
            ) -> list[dict[str, Any]]:
        """Generate (with ``generator``, default :attr:`generator`) and score a batch of records.

        Records already done (:attr:`skip`) are left out.
        """
        batch = [r for r in batch if (r["index"], r.get("sample", 0)) not in self.skip]
        if not batch:
            return []
        start = time.perf_counter()
        seeds = [row_seed(self.base_seed, r["index"], r.get("sample", 0)) for r in batch]
        prompts = [self.format_prompt(r["question"]) for r in batch]
        results = (generator or self.generator).generate(prompts, seeds=seeds)
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
