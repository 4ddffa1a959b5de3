"""Configuration of the Soft Thinking generator, validated before any model work."""

from __future__ import annotations

from dataclasses import dataclass

from softtok.soft.filters import FilterConfig, check_range
from softtok.soft.mixers import MULTIPLEX_MERGES

#: KV-cache kinds of the decode engine.
CACHES = ("dynamic", "static")

#: Thinking modes and the mixer each one uses.
MODES = {
    "discrete": "hard",  # ordinary CoT: greedy at temperature 0, else sampled (the baseline)
    "soft": "topk",  # vanilla Soft Thinking
    "dirichlet": "dirichlet",  # Dirichlet-resampled Soft Thinking
    "gumbel": "gumbel",  # Gumbel-Softmax Soft Thinking
    "moi": "moi",  # Mixture of Inputs
    "dense": "topk",  # the whole tempered distribution (softmax(logits / T) @ E), e.g. continuous-CoT RL rollouts
    "multiplex": "multiplex",  # Multiplex Thinking: `width` independent samples, their embeddings merged
    "swir": "hard",  # SwiReasoning: latent softmax(logits) @ E or an explicit sampled token, switched by entropy
}

#: Where a SwiReasoning row starts thinking.
START_MODES = ("latent", "explicit")


@dataclass(frozen=True)
class GenerationConfig:
    """Soft Thinking generation settings (defaults follow the paper's recommendations).

    Attributes:
        mode: ``discrete``, ``soft``, ``dirichlet``, ``gumbel``, ``moi`` or ``dense`` (the full
            tempered distribution ``softmax(logits / T) @ E``, restricted to ``top_k`` when set,
            as the continuous-CoT rollouts of "Soft Tokens, Hard Truths" feed it; ``max_topk``
            components are still recorded and the top-1 is shown; needs ``top_p: 1.0`` and
            ``min_p: 0.0``), ``multiplex`` (Multiplex Thinking: ``width`` tokens sampled
            from the filtered distribution, their embeddings merged) or ``swir`` (SwiReasoning:
            each row switches between latent steps, the untempered ``softmax(logits) @ E``, and
            explicit steps, a token sampled with the thinking filters, by the entropy trend;
            see :mod:`softtok.generation.swir`).
        temperature: Thinking temperature (0 = greedy; only ``discrete`` and ``swir``, whose
            explicit steps then take the argmax, allow 0).
        top_k: Thinking top-k filter (0 disables).
        top_p: Thinking nucleus filter in (0, 1].
        min_p: Thinking min-p filter in [0, 1].
        max_topk: Mixture components per concept token.
        alpha: Dirichlet concentration scale (``dirichlet``).
        tau: Gumbel-Softmax temperature (``gumbel``).
        beta: Sampled-token weight (``moi``).
        width: Tokens sampled and merged per step (``multiplex``; the reference's 3).
        merge: ``weighted`` (by the samples' probabilities, the reference scripts' default) or
            ``mean`` (``multiplex``).
        think_start: The think-start marker whose embedding is blended into the input when a
            ``swir`` row enters latent thinking (``alpha0 < 1``).
        alpha0: ``swir`` blend coefficient of the latent input at a switch to latent thinking,
            annealed linearly to 1 over ``max_think_tokens``; the reference code's default 1.0
            (no blend), its scripts tune it per model and dataset (0.1-1.0).
        beta0: ``swir`` blend coefficient at a switch to explicit thinking (the rest is the
            ``think_end`` marker's embedding), annealed the same way; the reference's 0.7.
        window_size: ``swir``: explicit steps a row takes before it may return to latent (512).
        max_switch_count: ``swir``: the latent-to-explicit switch with this number forces
            ``think_end`` instead (the reference injects ``</think>`` there); ``None``: no limit.
        start_mode: ``swir``: ``latent`` (the reference) or ``explicit``.
        switching: ``swir``: switch by the entropy trend; ``False`` keeps every row in
            ``start_mode`` (all-latent or all-explicit thinking).
        noise_factor: Gaussian embedding noise, as a multiple of the embedding RMS.
        think_end: String that ends thinking when it appears in the top-1 text stream.
        max_think_tokens: Thinking budget; then ``think_end`` is forced.
        cold_stop_entropy: Cold Stop entropy threshold in nats (0 = off).
        cold_stop_length: Consecutive low-entropy steps that trigger Cold Stop.
        answer_temperature: Answer-phase temperature (0 = greedy).
        answer_top_k: Answer-phase top-k (0 disables).
        answer_top_p: Answer-phase nucleus filter.
        answer_min_p: Answer-phase min-p filter.
        max_answer_tokens: Answer budget.
        stop_strings: Strings that end the answer (EOS always does).
        probe: Also feed the top-1 and top-2 one-hot inputs at each soft step and record the
            Jensen-Shannon divergence of their next-token distributions to the soft input's.
        return_topk: Record each concept token's ids and weights.
        record_inputs: Record the exact input embedding fed at each thinking step (noise
            included; the hard think-end token where the top-1 stream wrote it), as
            ``GenerationResult.cot_inputs``: what an RL log-probability recomputes.
        sync_every: Decode steps between host checks of the row states (stop when every row
            is done; drop finished rows with ``compact``). Outputs do not depend on it.
        cache: KV cache: ``dynamic`` (grows each step; finished rows can be dropped) or
            ``static`` (preallocated, fixed shapes: what ``compile`` and CUDA graphs need).
        max_cache_len: Length of the static cache in tokens (prompt, soft prompt and every
            decode step); ``None`` sizes it to the batch's prompt plus the budgets, rounded
            up to a multiple of 256 so that compiled graphs are reused across batches.
        compact: At each host check, drop finished rows from a dynamic cache (saves compute
            when rows end at different steps; a static cache keeps them, masked).
        compile: Compile the decode step (mixing, phase update and, with a static cache, the
            model forward) with ``torch.compile``; on CUDA with a static cache it runs as a
            CUDA graph (``mode="reduce-overhead"``).
    """

    mode: str = "soft"
    temperature: float = 0.6
    top_k: int = 30
    top_p: float = 0.95
    min_p: float = 0.001
    max_topk: int = 10
    alpha: float = 4.0
    tau: float = 0.5
    beta: float = 1.0
    width: int = 3
    merge: str = "weighted"
    think_start: str = "<think>"
    alpha0: float = 1.0
    beta0: float = 0.7
    window_size: int = 512
    max_switch_count: int | None = None
    start_mode: str = "latent"
    switching: bool = True
    noise_factor: float = 0.0
    think_end: str = "</think>"
    max_think_tokens: int = 256
    cold_stop_entropy: float = 0.0
    cold_stop_length: int = 256
    answer_temperature: float = 0.0
    answer_top_k: int = 0
    answer_top_p: float = 1.0
    answer_min_p: float = 0.0
    max_answer_tokens: int = 64
    stop_strings: tuple[str, ...] = ()
    probe: bool = False
    return_topk: bool = False
    record_inputs: bool = False
    sync_every: int = 16
    cache: str = "dynamic"
    max_cache_len: int | None = None
    compact: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is unknown; allowed: {', '.join(MODES)}")
        if self.mode not in ("discrete", "swir") and self.temperature == 0:
            raise ValueError(f"temperature=0 is only allowed in modes 'discrete' and 'swir' (mode={self.mode!r}); "
                             "use > 0")
        for name in ("max_think_tokens", "cold_stop_length", "sync_every", "window_size", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if int(self.max_answer_tokens) != self.max_answer_tokens or self.max_answer_tokens < 0:
            raise ValueError(f"max_answer_tokens={self.max_answer_tokens!r} must be an integer >= 0")
        if not isinstance(self.think_end, str) or not self.think_end:
            raise ValueError(f"think_end={self.think_end!r} must be a non-empty string that ends thinking, "
                             "e.g. '</think>'")
        strings = self.stop_strings
        if isinstance(strings, str) or not isinstance(strings, (list, tuple)) or not all(
            isinstance(s, str) and s for s in strings
        ):
            raise ValueError(f"stop_strings={strings!r} must be a list of non-empty strings, e.g. ['\\n'] "
                             "(a bare string would stop at any of its characters, an empty one at once)")
        object.__setattr__(self, "stop_strings", tuple(strings))  # lists (YAML, dicts) become the declared tuple
        if self.probe and (self.mode == "discrete" or (self.width if self.mode == "multiplex" else self.max_topk) < 2):
            raise ValueError(f"probe=True needs a soft mode with max_topk >= 2, or width >= 2 in mode 'multiplex' "
                             f"(mode={self.mode!r}, max_topk={self.max_topk}, width={self.width})")
        self._check_swir()
        if self.mode == "dense" and (self.top_p < 1.0 or self.min_p > 0.0):
            raise ValueError(f"mode='dense' embeds the whole tempered distribution (top_k may restrict it): set "
                             f"top_p: 1.0 and min_p: 0.0 (got top_p={self.top_p}, min_p={self.min_p})")
        if self.cache not in CACHES:
            raise ValueError(f"cache={self.cache!r} is unknown; allowed: {', '.join(CACHES)}")
        if self.max_cache_len is not None and (int(self.max_cache_len) != self.max_cache_len
                                               or self.max_cache_len < 2):
            raise ValueError(f"max_cache_len={self.max_cache_len!r} must be an integer >= 2, or null (automatic)")
        if self.probe and self.compile:
            raise ValueError("probe=True runs extra forward passes that restore the KV cache between them, which a "
                             "compiled step cannot do; allowed: probe=True with compile=False")
        check_range("cold_stop_entropy", self.cold_stop_entropy, 0.0, float("inf"))
        check_range("noise_factor", self.noise_factor, 0.0, float("inf"))
        _ = self.thinking_filters  # builds (and so validates) both filter sets
        try:
            _ = self.answer_filters
        except ValueError as err:
            raise ValueError(f"answer_{err}") from None

    def _check_swir(self) -> None:
        """The SwiReasoning and Multiplex settings (checked in every mode: a recipe's typo fails early)."""
        if self.merge not in MULTIPLEX_MERGES:
            raise ValueError(f"merge={self.merge!r} is unknown; allowed: {', '.join(MULTIPLEX_MERGES)}")
        if not isinstance(self.switching, bool):
            raise ValueError(f"switching={self.switching!r} must be true or false")
        if self.start_mode not in START_MODES:
            raise ValueError(f"start_mode={self.start_mode!r} is unknown; allowed: {', '.join(START_MODES)}")
        for name in ("alpha0", "beta0"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        count = self.max_switch_count
        if count is not None and (isinstance(count, bool) or int(count) != count or count < 1):
            raise ValueError(f"max_switch_count={count!r} must be an integer >= 1 (the latent-to-explicit switch "
                             "that forces think_end), or null for no limit")
        if not isinstance(self.think_start, str) or not self.think_start:
            raise ValueError(f"think_start={self.think_start!r} must be a non-empty string, e.g. '<think>'")
        if self.mode == "swir" and self.noise_factor > 0:
            raise ValueError(f"noise_factor={self.noise_factor} is not supported in mode 'swir' (its latent input "
                             "is the untempered mixture, as in the reference); allowed: 0.0")

    @property
    def thinking_filters(self) -> FilterConfig:
        """The thinking-phase filters."""
        return FilterConfig(self.temperature, self.top_k, self.top_p, self.min_p)

    @property
    def answer_filters(self) -> FilterConfig:
        """The answer-phase filters."""
        return FilterConfig(self.answer_temperature, self.answer_top_k, self.answer_top_p, self.answer_min_p)

    @property
    def mixer_kwargs(self) -> dict:
        """Constructor arguments of the thinking mixer."""
        return {
            "soft": {"max_topk": self.max_topk},
            "dirichlet": {"max_topk": self.max_topk, "alpha": self.alpha},
            "gumbel": {"max_topk": self.max_topk, "tau": self.tau},
            "moi": {"max_topk": self.max_topk, "beta": self.beta},
            "dense": {"max_topk": self.max_topk},
            "multiplex": {"width": self.width, "merge": self.merge},
            "discrete": {"sample": self.temperature > 0},
            "swir": {"sample": self.temperature > 0},
        }[self.mode]
