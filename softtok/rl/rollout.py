"""Rollouts for continuous-CoT RL: hard, soft or fuzzy chains of thought from the decode engine.

"Soft Tokens, Hard Truths" (methods.md section 4) trains with three kinds of CoT:

* ``hard``: categorical sampling of CoT tokens at ``tau = 1`` (the discrete baseline);
* ``soft``: the input is ``h_t = softmax(logits / 0.5) @ E`` plus Gaussian noise;
* ``fuzzy``: the same at ``tau = 1e-4`` (nearly one-hot) plus noise,

with ``sigma = noise_factor x`` the embedding RMS (0.33), through the model's own embedding
module. The CoT ends when the top-1 ("greedy shadow") text writes ``think_end``, or at
the budget (then ``think_end`` is fed); the answer is then sampled as hard tokens at the
training temperature. All of it is :class:`~softtok.generation.SoftThinkingGenerator`
(``mode: dense`` with ``record_inputs`` for soft / fuzzy, ``discrete`` sampling for hard):
no second decode loop, and every draw comes from the row's own seed, so a rollout is
the same whatever else is in its batch.

:func:`generate_rollouts` makes ``G`` rollouts per prompt (consecutive rows) and packs them
in a :class:`RolloutBatch` whose :meth:`~RolloutBatch.log_probs` recomputes their
log-probabilities with gradients (:func:`~softtok.rl.logprob.rollout_log_probs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from softtok.generation import GenerationConfig, GenerationResult, SoftThinkingGenerator
from softtok.generation.generator import FORCED_REASONS
from softtok.rl.logprob import GaussianDensity, RolloutLogProbs, rollout_log_probs
from softtok.soft.random import row_seed

#: CoT modes and their default temperature (the paper's).
RL_MODES = {"hard": 1.0, "soft": 0.5, "fuzzy": 1e-4}

#: Evaluation inference: the CoT as hard tokens or as Soft Thinking's mixture, greedy (pass@1)
#: or sampled as in training (pass@k). See :meth:`RolloutConfig.eval_generation_config`.
EVAL_MODES = ("hard_greedy", "hard_sampled", "soft_greedy", "soft_sampled")


@dataclass(frozen=True)
class RolloutConfig:
    """How rollouts are generated (defaults: "Soft Tokens, Hard Truths").

    Attributes:
        mode: ``hard``, ``soft`` or ``fuzzy``.
        group_size: Rollouts per prompt ``G`` (at least 2 for RLOO / GRPO).
        temperature: CoT temperature ``tau``; ``None``: the mode's (1.0, 0.5, 1e-4).
        top_k: Restrict the soft / fuzzy mean to the ``k`` most likely tokens (0: the full
            vocabulary, the paper); the hard mode samples from the full distribution.
        noise_factor: Gaussian noise ``sigma`` as a multiple of the embedding RMS (soft / fuzzy),
            > 0.
        think_end: The string whose appearance in the top-1 text ends the CoT.
        max_think_tokens: CoT budget (the paper: 128 for GSM8K, 512 for MATH).
        max_answer_tokens: Answer budget (the paper: 32).
        answer_temperature: Answer sampling temperature (the policy's, 1.0).
        stop_strings: Strings that end the answer.
        cache: The decode engine's KV cache, ``dynamic`` or ``static`` (see
            :class:`~softtok.generation.GenerationConfig`; changes speed, not rollouts).
        compile: Compile the engine's step (``torch.compile``; with ``cache: static``, the whole step).
    """

    mode: str = "soft"
    group_size: int = 8
    temperature: float | None = None
    top_k: int = 0
    noise_factor: float = 0.33
    think_end: str = "</think>"
    max_think_tokens: int = 128
    max_answer_tokens: int = 32
    answer_temperature: float = 1.0
    stop_strings: tuple[str, ...] = ()
    cache: str = "dynamic"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.mode not in RL_MODES:
            raise ValueError(f"mode={self.mode!r} is unknown; allowed: {', '.join(RL_MODES)}")
        if int(self.group_size) != self.group_size or self.group_size < 1:
            raise ValueError(f"group_size={self.group_size!r} must be an integer >= 1 (>= 2 for RLOO / GRPO)")
        if self.mode != "hard" and not self.noise_factor > 0:
            raise ValueError(f"noise_factor={self.noise_factor!r} must be > 0 in mode {self.mode!r}: the soft and "
                             "fuzzy policies are Gaussian around the mean input")
        if self.tau <= 0:
            raise ValueError(f"temperature={self.temperature!r} must be > 0")
        if not self.answer_temperature > 0:
            raise ValueError(f"answer_temperature={self.answer_temperature!r} must be > 0: RL samples the answer "
                             "from the policy (greedy answers are for evaluation: the *_greedy eval modes)")
        self.generation_config()  # validates the rest (budgets, think_end, stop strings, top_k)

    @property
    def tau(self) -> float:
        """The CoT temperature in use."""
        return RL_MODES[self.mode] if self.temperature is None else float(self.temperature)

    def generation_config(self) -> GenerationConfig:
        """The generator settings of these rollouts."""
        if self.mode == "hard":
            return self._generation("discrete", self.tau, self.answer_temperature)
        return self._generation("dense", self.tau, self.answer_temperature, noise_factor=self.noise_factor,
                                top_k=self.top_k, record_inputs=True)

    def eval_generation_config(self, mode: str) -> GenerationConfig:
        """The generator settings of an evaluation ``mode`` (one of :data:`EVAL_MODES`).

        ``hard_*`` thinks in tokens (``greedy``: temperature 0, else a hard config's ``tau``, 1.0 by default);
        ``soft_*`` feeds the mean mixture at this config's temperature and ``top_k`` (a
        ``hard`` policy: the soft mode's 0.5), with the training noise when ``sampled``.
        The answer is greedy in ``*_greedy`` and sampled at ``answer_temperature`` otherwise.
        So ``soft_sampled`` of a soft / fuzzy config is its training policy, and
        ``hard_sampled`` that of a hard one.

        Raises:
            ValueError: For an unknown ``mode``.
        """
        if mode not in EVAL_MODES:
            raise ValueError(f"evaluation mode {mode!r} is unknown; allowed: {', '.join(EVAL_MODES)}")
        thinking, sampling = mode.split("_")
        answer_temperature = self.answer_temperature if sampling == "sampled" else 0.0
        if thinking == "hard":
            tau = self.tau if self.mode == "hard" else RL_MODES["hard"]
            return self._generation("discrete", tau if sampling == "sampled" else 0.0, answer_temperature)
        tau = RL_MODES["soft"] if self.mode == "hard" else self.tau
        noise = self.noise_factor if sampling == "sampled" else 0.0
        return self._generation("dense", tau, answer_temperature, noise_factor=noise, top_k=self.top_k)

    def _generation(self, mode: str, temperature: float, answer_temperature: float, **extra: object
                    ) -> GenerationConfig:
        return GenerationConfig(
            mode=mode, temperature=temperature, answer_temperature=answer_temperature, think_end=self.think_end,
            max_think_tokens=self.max_think_tokens, max_answer_tokens=self.max_answer_tokens,
            stop_strings=self.stop_strings, top_p=1.0, min_p=0.0, cache=self.cache, compile=self.compile,
            **{"top_k": 0, **extra},
        )

    def density(self, sigma: float) -> GaussianDensity | None:
        """The CoT step density for noise ``sigma`` (``None`` for hard rollouts, whose CoT steps are tokens)."""
        return None if self.mode == "hard" else GaussianDensity(sigma)


@dataclass
class RolloutBatch:
    """``N = prompts x G`` rollouts (the ``G`` of a prompt in consecutive rows), padded for one forward.

    Attributes:
        prompt_ids: ``[N, P]`` left-padded prompt ids; ``prompt_mask`` ``[N, P]``.
        cot_inputs: ``[N, T, D]`` the embeddings fed (soft / fuzzy), else ``None``.
        cot_ids: ``[N, T]`` the sampled CoT tokens (hard), else ``None``.
        cot_mask: ``[N, T]`` the CoT steps of each row (fed; a prefix).
        cot_weight: ``[N, T]`` the CoT steps chosen by the policy (soft / fuzzy: not the step
            whose top-1 wrote ``think_end``, which is fed as that token).
        answer_ids: ``[N, A]`` forced ``think_end`` tokens (budget or Cold Stop) then the answer;
            ``answer_mask`` ``[N, A]``; ``answer_weight`` ``[N, A]`` 1 on the sampled answer tokens only.
        completions: The text of each rollout (thinking, then answer), for the rewards.
        results: The generator's results.
        seeds: Each row's seed.
        max_length: The most steps a rollout can take (CoT budget + ``think_end`` tokens +
            answer budget): ``dr_grpo``'s constant length.
        sigma: The noise standard deviation the rollouts were made with (0 for hard ones). It is
            set once, from the embedding RMS when the generator is built, and every log-density
            of these rollouts (policy, old policy, reference) uses it.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    cot_inputs: torch.Tensor | None
    cot_ids: torch.Tensor | None
    cot_mask: torch.Tensor
    cot_weight: torch.Tensor
    answer_ids: torch.Tensor
    answer_mask: torch.Tensor
    answer_weight: torch.Tensor
    completions: list[str]
    results: list[GenerationResult]
    seeds: list[int]
    max_length: int
    sigma: float

    def log_probs(self, model: PreTrainedModel, config: RolloutConfig, chunk_size: int = 64) -> RolloutLogProbs:
        """The rollouts' log-probabilities under ``model`` (with gradients when enabled).

        CoT tokens (hard) at ``config.tau`` and answer tokens at ``config.answer_temperature``:
        the distributions they were sampled from.
        """
        return rollout_log_probs(
            model, self.prompt_ids, self.prompt_mask, self.cot_mask, self.answer_ids, self.answer_mask,
            cot_inputs=self.cot_inputs, cot_ids=self.cot_ids, density=config.density(self.sigma),
            cot_weight=self.cot_weight, answer_weight=self.answer_weight, temperature=config.tau,
            answer_temperature=config.answer_temperature, top_k=config.top_k, chunk_size=chunk_size,
        )


def generate_rollouts(
    generator: SoftThinkingGenerator,
    prompts: Sequence[str],
    config: RolloutConfig,
    seeds: Sequence[int],
) -> RolloutBatch:
    """``G`` rollouts of each prompt: row ``i * G + g`` is rollout ``g`` of prompt ``i``.

    Row ``i * G + g`` is seeded ``row_seed(seeds[i], g)``: its draws depend on nothing else.

    Args:
        generator: A generator built with ``config.generation_config()``.
        prompts: Chat-formatted prompts.
        config: The rollout settings.
        seeds: One seed per prompt (e.g. derived from the training step and the prompt index).

    Raises:
        ValueError: If the generator's settings are not the config's, or for one seed per prompt missing.
    """
    if generator.config != config.generation_config():
        raise ValueError("the generator was built with other settings than config.generation_config()")
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds has {len(seeds)} values for {len(prompts)} prompts; allowed: one per prompt")
    tok, g = generator.tokenizer, config.group_size
    rows = [p for p in prompts for _ in range(g)]
    row_seeds = [row_seed(s, k) for s in seeds for k in range(g)]
    with torch.no_grad():
        results = generator.generate(rows, seeds=row_seeds)
    enc = tok(rows, padding=True, add_special_tokens=False, return_tensors="pt")
    device = generator.device
    n, t = len(rows), max((r.think_tokens for r in results), default=0)
    forced = generator.think_end_ids
    tails = [(forced if r.think_end in FORCED_REASONS else []) + r.answer_ids for r in results]
    a = max((len(tail) for tail in tails), default=0)
    cot_mask, cot_weight = torch.zeros(n, t), torch.zeros(n, t)
    answer_ids, answer_mask, answer_weight = torch.zeros(n, a, dtype=torch.long), torch.zeros(n, a), torch.zeros(n, a)
    hard = config.mode == "hard"
    cot_ids = torch.zeros(n, t, dtype=torch.long) if hard else None
    cot_inputs = None
    if not hard:
        weight = generator.model.get_input_embeddings().weight
        cot_inputs = torch.zeros(n, t, weight.shape[1], dtype=weight.dtype)
    for i, (res, tail) in enumerate(zip(results, tails, strict=True)):
        k = res.think_tokens
        cot_mask[i, :k] = 1
        cot_weight[i, :k] = 1
        if hard:
            cot_ids[i, :k] = torch.tensor(res.think_ids, dtype=torch.long)
        else:
            cot_inputs[i, :k] = res.cot_inputs
            if res.think_end == "think_end":
                cot_weight[i, k - 1] = 0  # fed as the token the top-1 stream wrote, not drawn from the policy
        answer_ids[i, :len(tail)] = torch.tensor(tail, dtype=torch.long)
        answer_mask[i, :len(tail)] = 1
        answer_weight[i, len(tail) - res.answer_tokens:len(tail)] = 1
    to = lambda x: None if x is None else x.to(device)  # noqa: E731
    return RolloutBatch(
        to(enc.input_ids), to(enc.attention_mask), to(cot_inputs), to(cot_ids), to(cot_mask), to(cot_weight),
        to(answer_ids), to(answer_mask), to(answer_weight), [r.thinking + r.answer for r in results], results,
        row_seeds, config.max_think_tokens + len(forced) + config.max_answer_tokens, generator.soft.sigma,
    )
