"""``ContinuousCoTModule``: RL of a hard, soft or fuzzy chain of thought with Lightning.

Thin wiring around :mod:`softtok.rl` ("Soft Tokens, Hard Truths", methods.md section 4):
each ``training_step`` makes ``G`` rollouts of every prompt of its batch
(:func:`~softtok.rl.generate_rollouts`, no gradients), scores them with the reward
functions and runs :func:`~softtok.rl.policy_update` (manual optimization: the update may
take several optimizer steps over the same rollouts). ``validation_step`` / ``test_step``
evaluate the policy under hard and soft inference, greedy (pass@1) and sampled (pass@k),
with :class:`~softtok.metrics.SoftThinkingMetrics`.

The policy stays in eval mode (no dropout), so the log-probs recomputed for the update are
those of the policy that made the rollouts. Under ``strategy: ddp`` each process makes the
rollouts of its own prompts; gradients are averaged by ``manual_backward``, and the two
terms that need the whole batch (``scale_rewards: batch``'s standard deviation, ``dapo``'s
step count) are reduced over processes first, so two processes update exactly as one
process with their global batch.

Checkpoints hold what is trained: the whole policy, or its LoRA weights only when
``lora`` is set, plus the optimizer and scheduler; they resume exactly (rollout seeds
depend on the run's seed, the epoch and the problem, not on the step or the process).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.metrics import SoftThinkingMetrics
from softtok.models import DEFAULT_MODEL, load_model, load_tokenizer, model_fingerprint
from softtok.modules.optim import adamw_cosine, check_optimizer_settings
from softtok.modules.soft_thinking import DEFAULT_SYSTEM_PROMPT, SoftThinkingModule
from softtok.rl.losses import advantages as compute_advantages
from softtok.rl.rewards import RewardFn, resolve_rewards, score_rewards
from softtok.rl.rollout import EVAL_MODES, RolloutBatch, RolloutConfig, generate_rollouts
from softtok.rl.update import AlgorithmConfig, policy_update, sequence_log_probs
from softtok.soft.random import row_seed

#: The checkpoint entry that says what the policy weights in it are.
META_KEY = "softtok_rl"


def _config(value: Any, cls: type, name: str) -> Any:
    if isinstance(value, Mapping):
        return cls(**value)  # validates every field
    if not isinstance(value, cls):
        raise ValueError(f"{name}={value!r} must be a {cls.__name__} or a dict of its fields")
    return value


class ContinuousCoTModule(SoftThinkingModule):
    """Reinforcement learning of a continuous (soft / fuzzy) or hard chain of thought.

    Args:
        model: Model name or path (see :func:`softtok.models.load_model`).
        rollout: How rollouts are made (:class:`~softtok.rl.RolloutConfig` or a dict of its
            fields): ``mode`` hard / soft / fuzzy, group size, temperature, noise, budgets, ``think_end``.
        algorithm: The estimator and loss (:class:`~softtok.rl.AlgorithmConfig` or a dict):
            RLOO (default) or GRPO, loss aggregation, clipping, inner epochs, ``beta``, gradient clipping.
        rewards: Reward functions: names from :data:`softtok.rl.REWARDS`, import paths
            ``"package.module.function"``, or (from Python) callables
            ``(prompts, completions, references) -> list[float]``. The prompts given are the
            questions; the references are ``{"answer": ..., "scorer": ...}`` per completion.
        reward_weights: One weight per reward (``None``: 1 each); the reward is their weighted sum.
        system_prompt: System message put before each question (``None``: none).
        dtype: Model weight dtype: float32 for full fine-tuning (bf16 weights lose most updates at
            RL learning rates; use the Trainer's ``precision="bf16-mixed"`` on GPUs); bf16 suits LoRA.
        lr: AdamW peak learning rate ("Soft Tokens, Hard Truths": 3e-6 to 8e-6 for 3-8B models).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up optimizer steps before the cosine decay (the paper: 20).
        lora: LoRA on the policy instead of full fine-tuning: keyword arguments of
            ``peft.LoraConfig`` (e.g. ``{"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}``);
            ``None``: train every weight.
        reference_model: With ``algorithm.beta > 0``: the frozen reference of the KL penalty,
            a model name or path with the policy's vocabulary; ``None``: the initial policy
            (with LoRA: the base model, adapters off, no copy).
        eval_modes: Inference of validation / test, from :data:`softtok.rl.rollout.EVAL_MODES`:
            ``hard_greedy``, ``hard_sampled``, ``soft_greedy``, ``soft_sampled``. Greedy modes use
            each problem's first sample (pass@1); sampled modes all ``n_samples`` (pass@k).
        pass_k: The k of the sampled modes' pass@k (each needs ``n_samples >= k`` in the data).
        chunk_size: CoT steps per chunk of the log-prob recompute (memory ~ ``N x chunk x V``).

    Raises:
        ValueError: For a bad setting, before the model loads; in :meth:`setup`, for ``pass_k``
            above the data's ``n_samples``, a ``think_end`` the tokenizer cannot encode, a
            reference model with another vocabulary or a LoRA target the model lacks.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        rollout: RolloutConfig = RolloutConfig(think_end="Final answer:"),  # noqa: B008 (frozen)
        algorithm: AlgorithmConfig = AlgorithmConfig(),  # noqa: B008 (frozen)
        rewards: Sequence[str | RewardFn] = ("correctness",),
        reward_weights: list[float] | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        dtype: str = "float32",
        lr: float = 6e-6,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        lora: dict[str, Any] | None = None,
        reference_model: str | None = None,
        eval_modes: Sequence[str] = EVAL_MODES,
        pass_k: list[int] | None = None,
        chunk_size: int = 64,
    ) -> None:
        rollout = _config(rollout, RolloutConfig, "rollout")
        algorithm = _config(algorithm, AlgorithmConfig, "algorithm")
        super().__init__(model, rollout.generation_config(), system_prompt, dtype, pass_k)
        if rollout.group_size < 2:
            raise ValueError(f"rollout.group_size={rollout.group_size} must be >= 2: {algorithm.estimator} compares "
                             "each rollout with the others of its prompt")
        check_optimizer_settings(lr, weight_decay, warmup_steps)
        if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r} must be an integer >= 1")
        if isinstance(eval_modes, str) or not list(eval_modes):
            raise ValueError(f"eval_modes={eval_modes!r} must be a list of at least one of {', '.join(EVAL_MODES)}")
        eval_modes = list(eval_modes)
        for mode in eval_modes:
            rollout.eval_generation_config(mode)  # raises naming the allowed modes
        if lora is not None:
            from peft import LoraConfig

            try:
                LoraConfig(**lora)
            except (TypeError, ValueError) as err:
                raise ValueError(f"lora={lora!r} is not a valid peft.LoraConfig: {err}") from None
        if reference_model is not None and algorithm.beta == 0:
            raise ValueError(f"reference_model={reference_model!r} is only used with algorithm.beta > 0 (beta=0)")
        if isinstance(rewards, str) or callable(rewards):
            raise ValueError(f"rewards={rewards!r} must be a list of rewards, e.g. [{rewards!r}]")
        try:
            self.reward_fns, self.reward_weights = resolve_rewards(list(rewards), reward_weights)
        except ValueError as err:
            raise ValueError(str(err).replace("weights=", "reward_weights=")) from None
        self.rollout, self.algorithm = rollout, algorithm
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.lora, self.reference_model, self.chunk_size = lora, reference_model, chunk_size
        self.eval_modes = eval_modes
        self.save_hyperparameters(ignore=["rollout", "algorithm", "rewards"])
        self.hparams.update(rollout=dataclasses.asdict(rollout), algorithm=dataclasses.asdict(algorithm),
                            rewards=[r if isinstance(r, str) else f"{r.__module__}.{r.__qualname__}" for r in rewards])
        self.automatic_optimization = False
        del self.metrics  # the parent's inference metrics; evaluation here has one set per mode and stage
        self.strict_loading = lora is None  # a LoRA checkpoint holds the adapters only
        self.eval_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({mode: SoftThinkingMetrics(ks=self._ks(mode)) for mode in eval_modes})
            for stage in ("val", "test")
        })
        self._eval_generators: dict[str, SoftThinkingGenerator] = {}
        self._reference: list[PreTrainedModel] = []  # a list: not a submodule, so not in checkpoints

    def _ks(self, mode: str) -> tuple[int, ...]:
        return (1,) if mode.endswith("greedy") else self.pass_k

    # ------------------------------------------------------------------ loading
    def setup(self, stage: str) -> None:
        """Check ``pass_k`` against the data's ``n_samples``, then load the policy (and reference)."""
        trainer = self._trainer
        n_samples = getattr(getattr(trainer, "datamodule", None), "n_samples", None)
        evaluates = stage in ("test", "validate") or (stage == "fit" and getattr(trainer, "limit_val_batches", 1) != 0)
        if evaluates and isinstance(n_samples, int) and any(m.endswith("sampled") for m in self.eval_modes):
            self.check_pass_k(n_samples)
        if self.algorithm.beta > 0 and self.reference_model is not None:
            self._check_reference_vocabulary()
        records = getattr(getattr(trainer, "datamodule", None), "train_records", None)
        if stage == "fit" and records:
            self.check_rewards(records[0])
        self.load()

    def check_checkpoint(self, path: str) -> None:
        """Refuse a checkpoint that this module cannot continue or evaluate, reading only the file.

        The ``softtok`` CLI calls it before the run starts, so a wrong checkpoint fails before
        the model loads; :meth:`on_load_checkpoint` checks the same when Lightning restores one.

        Raises:
            ValueError: Not a softtok continuous-CoT checkpoint, one with other LoRA settings,
                or one trained from another model (another name or, for a local folder or
                ``tiny-reasoner``, other weights).
        """
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        self._check_meta(checkpoint.get(META_KEY), str(path))

    def _check_meta(self, meta: Mapping[str, Any] | None, where: str) -> None:
        if meta is None:
            raise ValueError(f"{where} is not a softtok continuous-CoT checkpoint (no {META_KEY!r} entry)")
        if (meta.get("lora") is None) != (self.lora is None):
            raise ValueError(f"{where} was trained with lora={meta.get('lora')!r}, this module has "
                             f"lora={self.lora!r}; set the same lora settings to load it")
        theirs, ours = meta.get("fingerprint"), model_fingerprint(self.model_name)
        if theirs is not None and theirs != ours:
            raise ValueError(f"{where} was trained from model={meta.get('model')!r} ({theirs}), but this run's "
                             f"model={self.model_name!r} is {ours}; set model to the checkpoint's")

    def check_rewards(self, record: Mapping[str, Any]) -> None:
        """Call every reward function once on a made-up completion of ``record`` (its reference answer).

        So a function that does not return one finite number per completion fails before the
        model loads, not after the first batch of rollouts.

        Raises:
            ValueError: Naming the function, as :func:`~softtok.rl.rewards.score_rewards`.
        """
        score_rewards(self.reward_fns, self.reward_weights, [record["question"]],
                      [f"Final answer: {record['answer']}"], self.references([record]))

    def _check_reference_vocabulary(self) -> None:
        theirs, ours = load_tokenizer(self.reference_model), load_tokenizer(self.model_name)
        if theirs.get_vocab() != ours.get_vocab():
            raise ValueError(
                f"reference_model={self.reference_model!r} has another vocabulary than model={self.model_name!r} "
                f"({len(theirs)} vs {len(ours)} tokens, or other ids): the KL penalty compares their token "
                "log-probs, so it needs the same tokenizer; use a model of the same family, or null (the initial "
                "policy)")

    def prepare_lm(self, lm: PreTrainedModel) -> PreTrainedModel:
        """Make the loaded model the trainable policy (LoRA adapters when ``lora`` is set); keep the reference."""
        lm.eval()  # no dropout: the recomputed log-probs must be those of the rollout policy
        if self.algorithm.beta > 0 and self.lora is None:
            if self.reference_model is None:
                reference = copy.deepcopy(lm)
            else:
                reference, _ = load_model(self.reference_model, dtype=self.dtype_name)
            self._reference.append(reference.requires_grad_(False).eval())
        if self.lora is None:
            return lm.requires_grad_(True)
        from peft import LoraConfig, get_peft_model

        targets = self.lora.get("target_modules")
        if isinstance(targets, (list, tuple)):
            names = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
            missing = sorted(set(targets) - names)
            if missing:
                linear = sorted({n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)})
                raise ValueError(f"lora target_modules {missing} are not modules of model={self.model_name!r}; "
                                 f"its linear layers: {linear}")
        policy = get_peft_model(lm, LoraConfig(**self.lora))
        policy.eval()
        return policy

    def eval_generator(self, mode: str) -> SoftThinkingGenerator:
        """The generator of an evaluation mode (built on first use)."""
        if mode not in self._eval_generators:
            config = self.rollout.eval_generation_config(mode)
            self._eval_generators[mode] = SoftThinkingGenerator(self.lm, self.tokenizer, config)
        return self._eval_generators[mode]

    def train(self, mode: bool = True) -> ContinuousCoTModule:
        """Lightning's train / eval switch, except that the policy never uses dropout."""
        super().train(mode)
        if self._generator is not None:
            self.lm.eval()
        return self

    # --------------------------------------------------------------- training
    def references(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """What the reward functions get for each record: its answer and, for reasoning-gym, its scorer."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        scorer_for = getattr(datamodule, "scorer_for", None)
        return [{"answer": r["answer"], "scorer": scorer_for(r) if scorer_for else None} for r in records]

    def make_rollouts(self, records: Sequence[Mapping[str, Any]]) -> RolloutBatch:
        """``G`` rollouts of each record, seeded by (run seed, epoch, problem, sample) only."""
        seeds = [row_seed(self.base_seed, self.current_epoch, r["index"], r.get("sample", 0)) for r in records]
        prompts = [self.format_prompt(r["question"]) for r in records]
        return generate_rollouts(self.generator, prompts, self.rollout, seeds)

    def _global_terms(self, rewards: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor | None, float | None]:
        """Advantages and ``dapo``'s step count over all processes (``None``: the local ones are the global ones)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return None, None
        advantages = None
        if self.algorithm.estimator == "grpo" and self.algorithm.scale_rewards == "batch":
            everyone = self.all_gather(rewards).reshape(-1)
            start = self.global_rank * rewards.numel()
            advantages = compute_advantages(everyone, self.rollout.group_size, "grpo", "batch")
            advantages = advantages[start:start + rewards.numel()]
        steps = (batch.cot_weight.sum() + batch.answer_weight.sum()).to(self.device)
        return advantages, float(self.trainer.strategy.reduce(steps, reduce_op="sum")) / world

    def _reference_log_probs(self, batch: RolloutBatch) -> torch.Tensor | None:
        if self.algorithm.beta == 0:
            return None
        with torch.no_grad():
            if self.lora is not None:
                with self.lm.disable_adapter():
                    return sequence_log_probs(self.lm, batch, self.rollout, self.chunk_size)[0]
            reference = self._reference[0].to(self.device)
            return sequence_log_probs(reference, batch, self.rollout, self.chunk_size)[0]

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        rollouts = self.make_rollouts(batch)
        g = self.rollout.group_size
        rows = [r for r in batch for _ in range(g)]
        rewards, parts = score_rewards(self.reward_fns, self.reward_weights, [r["question"] for r in rows],
                                       rollouts.completions, self.references(rows))
        rewards = rewards.to(self.device)
        advantages, num_items = self._global_terms(rewards, rollouts)
        stats = policy_update(
            self.lm, self.optimizers(), rollouts, rewards, self.rollout, self.algorithm,
            scheduler=self.lr_schedulers(), ref_logp=self._reference_log_probs(rollouts), advantages=advantages,
            num_items=num_items, backward=self.manual_backward, chunk_size=self.chunk_size,
        )
        ends = [r.think_end for r in rollouts.results]
        entropies = [sum(r.entropy) / len(r.entropy) for r in rollouts.results if r.entropy]
        stats.update(
            think_end_rate=ends.count("think_end") / len(ends), budget_rate=ends.count("budget") / len(ends),
            entropy=sum(entropies) / len(entropies) if entropies else math.nan,
            lr=self.lr_schedulers().get_last_lr()[0],
            **{f"reward/{name}": float(value.mean()) for name, value in parts.items()},
        )
        size = len(rows)
        for name, value in stats.items():
            self.log(f"train/{name}", value, batch_size=size, sync_dist=True, prog_bar=name == "reward_mean")

    # ------------------------------------------------------------- evaluation
    def _evaluate(self, batch: list[dict[str, Any]], stage: str) -> None:
        for mode in self.eval_modes:
            records = batch if mode.endswith("sampled") else [r for r in batch if r.get("sample", 0) == 0]
            out = self.run(records, generator=self.eval_generator(mode))
            self.eval_metrics[stage][mode].update([{**r, "problem": r["index"]} for r in out])

    def _log_eval(self, stage: str) -> None:
        for mode, metric in self.eval_metrics[stage].items():
            for name, value in metric.compute().items():
                self.log(f"{stage}/{mode}/{name}", float(value), sync_dist=False, rank_zero_only=True)
            metric.reset()

    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int = 0) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int = 0) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def predict_generation(self) -> GenerationConfig:
        """``predict`` writes the records of the first evaluation mode."""
        return self.rollout.eval_generation_config(self.eval_modes[0])

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int = 0) -> list[dict[str, Any]]:
        """Records of the first evaluation mode."""
        return self.run(batch, generator=self.eval_generator(self.eval_modes[0]))

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the trainable weights, linear warm-up then cosine decay to 0 over the run's optimizer steps."""
        params = [p for p in self.lm.parameters() if p.requires_grad]
        trainer = self.trainer
        inner = self.algorithm.inner_epochs
        # A training step makes `inner` optimizer steps, and Lightning stops after the step that
        # reaches max_steps: the run makes max_steps rounded up to a multiple of `inner`.
        total = -(-trainer.max_steps // inner) * inner if trainer.max_steps > 0 else \
            int(trainer.estimated_stepping_batches) * inner
        return adamw_cosine(params, self.lr, self.weight_decay, self.warmup_steps, total)

    # ------------------------------------------------------------ checkpoints
    def _trained_keys(self) -> set[str]:
        return {f"lm.{name}" for name, p in self.lm.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """With LoRA keep only the adapter weights; record what the weights are."""
        if self.lora is not None:
            keep = self._trained_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[META_KEY] = {"model": self.model_name, "fingerprint": model_fingerprint(self.model_name),
                                "lora": self.lora, "mode": self.rollout.mode}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model or LoRA setting, or one lacking a trained weight."""
        self._check_meta(checkpoint.get(META_KEY), "the checkpoint")
        self.load()
        missing = sorted(self._trained_keys() - set(checkpoint["state_dict"]))
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} trained weights, e.g. {missing[:3]}")
