"""The Soft Thinking decode engine over any Hugging Face causal LM.

One prefill, then one model step per token with the KV cache. Each row runs its own
phase machine::

    THINK --(top-1 text ends with think_end)----------------> ANSWER --(EOS / stop / budget)--> DONE
    THINK --(Cold Stop, budget or swir switch limit)---------> FORCED --(think_end fed)--> ANSWER
    THINK --(top-1 is EOS)------------------------------------------------------------------> DONE

In THINK the input is the concept token from :class:`~softtok.soft.SoftEmbedding`
(a one-hot in ``discrete`` mode; in ``swir`` mode, per row, the untempered mixture or the
sampled token that :class:`~softtok.generation.swir.EntropySwitch` picks, whose switch limit
forces ``think_end`` like the budget); forced and answer tokens are ordinary embeddings.

The machine lives on the device. Every row's phase and counters are tensors, and one
decode step is a fixed sequence of tensor operations for the whole batch: mix, pick each
row's input with ``torch.where`` (concept token, forced ``think_end`` token, answer token;
finished rows are carried along and ignored), detect ``think_end`` and stop strings with
precomputed token tables (:mod:`softtok.generation.stops`), write the outputs into
preallocated buffers, and run the model forward. Nothing in a step reads a value on the
host, so steps queue on an accelerator without waiting, and with a static KV cache the
whole step compiles to one graph (a CUDA graph on CUDA). The host looks at the states only
every ``sync_every`` steps, to stop when all rows are done and, with a dynamic cache, to
drop finished rows; since finished rows never change, the outputs are those of checking
every step.

Random draws (sampled tokens, Dirichlet, Gumbel, noise) come from
:class:`~softtok.soft.random.RowRandom`: a row's draws depend only on its seed and the
step, so a seeded row gives the same output alone, in any batch and on any number of
processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StaticCache

from softtok.generation.cache import ROW_SELECTABLE_LAYERS, restore_cache, snapshot_cache
from softtok.generation.config import MODES, GenerationConfig
from softtok.generation.prefill import PrefillBuilder, cache_argument, plain_prefill, prefill_logits
from softtok.generation.stops import StreamMatcher
from softtok.generation.swir import EntropySwitch
from softtok.soft.embedding import SoftEmbedding, embed_dense
from softtok.soft.filters import entropy, filter_candidates, renormalize, tempered_probs
from softtok.soft.mixers import HardMixer, Mixer, build_mixer
from softtok.soft.random import RowRandom, row_seed

THINK, FORCED, ANSWER, DONE = 0, 1, 2, 3
#: Why thinking ended, by the code stored in the ``reason`` state.
END_REASONS = ("", "think_end", "cold_stop", "budget", "eos", "switch_limit")
_THINK_END, _COLD_STOP, _BUDGET, _EOS, _SWITCH_LIMIT = 1, 2, 3, 4, 5
#: The reasons after which the engine fed ``think_end`` itself (the model did not write it).
FORCED_REASONS = ("cold_stop", "budget", "switch_limit")
#: Random streams of a step (see :meth:`RowRandom.child`).
_THINK_STREAM, _ANSWER_STREAM = 0, 1
#: Automatic static caches are rounded up to this many tokens, so compiled graphs are reused.
_CACHE_ROUNDING = 256


@dataclass
class GenerationResult:
    """What one prompt produced.

    Attributes:
        thinking: The thinking text: the top-1 token of each concept token, then ``think_end``
            when it was forced.
        answer: The answer-phase text (special tokens removed).
        think_tokens: Concept tokens fed (forced ``think_end`` tokens not counted).
        answer_tokens: Answer tokens generated.
        think_end: Why thinking ended: ``think_end``, ``cold_stop``, ``budget``, ``eos`` or
            ``switch_limit`` (``swir``: the switch numbered ``max_switch_count``).
        entropy: Entropy (nats) of the tempered distribution at each thinking step (``swir``: of
            the untempered distribution, its switching signal).
        think_ids: Top-1 ids of the thinking steps.
        answer_ids: Answer token ids.
        topk_ids: Per thinking step, the mixture's ids (with ``return_topk``).
        topk_weights: Per thinking step, the mixture's weights (with ``return_topk``).
        js_top1: Mean Jensen-Shannon divergence between the next-token distributions after the
            top-1 one-hot and after the soft input (with ``probe``).
        js_top2: The same for the top-2 one-hot.
        seed: The row seed its random draws came from.
        cot_inputs: ``[think_tokens, D]`` the input embedding fed at each thinking step (with
            ``record_inputs``; on the CPU, in the model's dtype).
        latent: ``swir``: per thinking step, whether its input was the latent mixture.
        switch_count: ``swir``: latent-to-explicit switches (the count ``max_switch_count`` limits).
    """

    thinking: str = ""
    answer: str = ""
    think_tokens: int = 0
    answer_tokens: int = 0
    think_end: str = ""
    entropy: list[float] = field(default_factory=list)
    think_ids: list[int] = field(default_factory=list)
    answer_ids: list[int] = field(default_factory=list)
    topk_ids: list[list[int]] | None = None
    topk_weights: list[list[float]] | None = None
    js_top1: float | None = None
    js_top2: float | None = None
    seed: int | None = None
    cot_inputs: torch.Tensor | None = None
    latent: list[bool] | None = None
    switch_count: int | None = None

    @property
    def latent_fraction(self) -> float | None:
        """``swir``: the share of thinking steps fed the latent mixture (``None`` in other modes)."""
        if self.latent is None:
            return None
        return sum(self.latent) / len(self.latent) if self.latent else 0.0

    @property
    def latent_segments(self) -> list[int] | None:
        """``swir``: the lengths (steps) of the runs of consecutive latent steps, in order."""
        if self.latent is None:
            return None
        runs, length = [], 0
        for flag in [*self.latent, False]:
            if flag:
                length += 1
            elif length:
                runs.append(length)
                length = 0
        return runs


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between ``softmax`` of two ``[B, V]`` logit rows."""
    logp, logq = torch.log_softmax(p_logits.float(), -1), torch.log_softmax(q_logits.float(), -1)
    logm = torch.logsumexp(torch.stack([logp, logq]), 0) - math.log(2.0)
    kl = lambda a: (a.exp() * (a - logm)).sum(-1)  # noqa: E731
    return (0.5 * (kl(logp) + kl(logq))).clamp_min(0.0)  # >= 0; rounding can give -1e-9 for equal rows


def encode_think_end(tokenizer: PreTrainedTokenizerBase, think_end: str, name: str = "think_end") -> list[int]:
    """The ids of ``think_end``, fed when thinking is forced to end (or of another marker, ``name``).

    Raises:
        ValueError: If the tokenizer cannot encode the string so that it decodes back to it.
    """
    ids = tokenizer.encode(think_end, add_special_tokens=False)
    if not ids or tokenizer.decode(ids).strip() != think_end.strip():
        raise ValueError(
            f"{name}={think_end!r} cannot be encoded by this tokenizer (it encodes to {ids} = "
            f"{tokenizer.decode(ids)!r}); allowed: a string that round-trips, e.g. "
            f"'{'<think>' if name == 'think_start' else '</think>'}' for models with thinking markers"
        )
    return ids


def default_seeds(batch: int) -> list[int]:
    """Row seeds when none are given: a base drawn from torch's global generator, then the row's position.

    So ``torch.manual_seed`` makes a run reproducible and successive calls draw differently.
    """
    base = int(torch.randint(0, 2**62, ()))
    return [row_seed(base, i) for i in range(batch)]


def to_static_cache(model: PreTrainedModel, cache, max_cache_len: int) -> StaticCache:  # noqa: ANN001
    """A :class:`~transformers.StaticCache` of ``max_cache_len`` holding what ``cache`` holds.

    An empty cache (plain prompts, prompt tuning) gives a fresh static cache; a filled one
    (prefix tuning's KV prefixes, IAPT's processed prompt) is copied layer by layer.

    Raises:
        ValueError: If the model's cache cannot be static (naming its type), if the content is
            longer than ``max_cache_len``, or if a sliding-window layer has already evicted
            tokens (a static window cannot take them back).
    """
    if not getattr(model, "_can_compile_fullgraph", False):
        raise ValueError(
            f"cache='static' needs a model whose cache can be static; {type(model).__name__} "
            f"(model_type={getattr(model.config, 'model_type', None)!r}) cannot. Allowed: cache='dynamic'"
        )
    length = cache.get_seq_length()
    if length >= max_cache_len:
        raise ValueError(f"the prompt fills {length} cache positions, more than max_cache_len={max_cache_len}")
    static = StaticCache(config=model.config, max_cache_len=max_cache_len)
    if length == 0:
        return static
    for index, layer in enumerate(cache.layers):
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        if layer.keys.shape[-2] != length:
            raise ValueError(
                f"layer {index} holds {layer.keys.shape[-2]} of the prompt's {length} cache positions (a sliding "
                "window that has already evicted tokens); a static cache cannot be built from it. Allowed: "
                "cache='dynamic', or a prompt shorter than the window"
            )
        static.update(layer.keys, layer.values, index)
    return static


class SoftThinkingGenerator:
    """Batched Soft Thinking (and discrete CoT) generation for any HF causal LM.

    Args:
        model: A causal LM (eval mode).
        tokenizer: Its tokenizer.
        config: Generation settings.
        mixer: A custom thinking mixer (any :class:`~softtok.soft.Mixer`); overrides the one the
            config's ``mode`` selects, keeping the config's filters, noise and budgets.

    Raises:
        ValueError: If ``config.think_end`` cannot be encoded by the tokenizer.

    Attributes:
        host_syncs: Host reads of device state while decoding in the last :meth:`generate` call
            (one per ``sync_every`` steps; the transfer of the outputs at the end not counted).
        steps: Decode steps run in the last call.

    Example:
        >>> gen = SoftThinkingGenerator(model, tokenizer, GenerationConfig(mode="gumbel"))
        >>> results = gen.generate(["<|im_start|>user\\nWhat is 2+3?<|im_end|>\\n<|im_start|>assistant\\n"], seeds=[7])
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: GenerationConfig | None = None,
        mixer: Mixer | None = None,
    ) -> None:
        self.model = model
        self._cache_argument = cache_argument(model)
        self.tokenizer = tokenizer
        self.config = config = config or GenerationConfig()
        self.think_end_ids = encode_think_end(tokenizer, config.think_end)
        embedding = model.get_input_embeddings()
        self.device = embedding.weight.device
        self.soft = SoftEmbedding(
            embedding,
            config.thinking_filters,
            mixer or build_mixer(MODES[config.mode], **config.mixer_kwargs),
            noise_factor=config.noise_factor,
            dense=config.mode == "dense",
        )
        self.answer_sampler = HardMixer(sample=config.answer_temperature > 0)
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = {e for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}  # may be empty
        self.think_matcher = StreamMatcher(tokenizer, [config.think_end], self.device)
        self.stop_matcher = StreamMatcher(tokenizer, config.stop_strings, self.device) if config.stop_strings else None
        with torch.no_grad():  # the mixture width K (fixed by the filters and the mixer)
            zeros = torch.zeros(1, embedding.weight.shape[0], dtype=embedding.weight.dtype, device=self.device)
            probe = self.soft.mix_logits(zeros,
                                         RowRandom(torch.zeros(1, dtype=torch.long, device=self.device)))
        self._width, self._weight_dtype = probe[0].shape[-1], probe[1].dtype
        self.switch = None
        if config.mode == "swir":  # SwiReasoning: the recorded mixture is the top-K of the latent distribution
            self._width, self._weight_dtype = min(config.max_topk, embedding.weight.shape[0]), torch.float32
            self.switch = EntropySwitch(config.window_size, config.max_switch_count, config.start_mode == "latent",
                                        config.switching, config.alpha0, config.beta0, config.max_think_tokens)
            start = encode_think_end(tokenizer, config.think_start, "think_start") if config.alpha0 < 1 else []
            with torch.no_grad():  # a marker of several tokens: the mean of their embeddings
                self._markers = torch.stack([
                    embedding(torch.tensor(ids, device=self.device)).float().mean(0) if ids else
                    torch.zeros(embedding.weight.shape[1], device=self.device) for ids in (start, self.think_end_ids)])
        self._think_end_tensor = torch.tensor(self.think_end_ids, dtype=torch.long, device=self.device)
        self._eos_list = sorted(self.eos_ids)
        self._eos_tensor = torch.tensor(self._eos_list, dtype=torch.long, device=self.device)
        self._compiled = None
        # A dynamic cache changes shape every step: only the phase update is compiled (dynamic batch).
        dynamic_compile = config.compile and config.cache == "dynamic"
        self._update_step = torch.compile(self._update, dynamic=None) if dynamic_compile else self._update
        self.host_syncs = 0
        self.steps = 0

    # ----------------------------------------------------------------- the step
    def _answer_tokens(self, logits: torch.Tensor, rng: RowRandom) -> torch.Tensor:
        """Sample (or argmax) the answer-phase tokens, ``[B]``.

        Greedy takes the argmax of the logits and unfiltered sampling draws from the full
        distribution in id order: neither needs the sorted candidate set (a sort over the
        vocabulary, the costliest operation of a step otherwise).
        """
        cfg = self.config.answer_filters
        if cfg.temperature == 0:
            return logits.argmax(-1)
        probs = tempered_probs(logits, cfg.temperature)
        if cfg.top_k == 0 and cfg.top_p == 1.0 and cfg.min_p == 0.0:
            return rng.categorical(probs)[:, 0]
        cand = filter_candidates(probs, cfg)
        return self.answer_sampler(cand.ids, cand.weights, rng)[0][:, 0]

    def _update(self, s: dict[str, torch.Tensor], logits: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """One phase-machine step for every row: the new state, the next inputs ``[B, D]`` and the soft ids.

        Pure tensor operations (no host reads): rows in every phase are computed and the right
        values picked per row with ``torch.where``; a buffer slot is written at each row's
        counter, and the counter advances only where the write is real.
        """
        cfg = self.config
        rng = RowRandom(s["seed"], s["step"])
        soft = self.soft(logits, rng.child(_THINK_STREAM))
        top1, ent = soft.token.top1, soft.entropy
        mixture_ids, mixture_weights = soft.token.ids, soft.token.weights
        phase = s["phase"]
        eos_ids = self._eos_tensor
        out = dict(s)  # the fields not updated below (seed, row, position, mask...) carry over

        # THINK: budget, Cold Stop, (swir) the switch limit, EOS, or a recorded concept token (which may
        # write think_end).
        think = phase == THINK
        if self.switch is not None:  # SwiReasoning: the untempered distribution gives the entropy and the mixture
            probs = tempered_probs(logits, 1.0)
            ent = entropy(probs)
        low_entropy = torch.where(think, torch.where(ent < cfg.cold_stop_entropy, s["low_entropy"] + 1, 0),
                                  s["low_entropy"])
        budget = think & (s["think_tokens"] >= cfg.max_think_tokens)
        cold = think & ~budget & (low_entropy >= cfg.cold_stop_length)
        forced_now = budget | cold
        switch_limit = torch.zeros_like(think)
        if self.switch is not None:
            switched, to_latent, to_explicit, switch_limit = self.switch.update(s, ent, think & ~forced_now)
            out.update(switched)
            forced_now = forced_now | switch_limit
            latent_now = switched["swir_latent"]
        if self.switch is not None and (cfg.return_topk or cfg.probe):
            # The recorded mixture (and the probe's top-1, top-2): the latent distribution's top-K, or the
            # explicit token as a one-hot. A top-K over the vocabulary: only when something reads it.
            top_weights, top_ids = probs.topk(self._width, dim=-1)
            first = torch.arange(self._width, device=top1.device) == 0
            mixture_ids = torch.where(latent_now[:, None], top_ids, torch.where(first, top1[:, None], 0))
            mixture_weights = torch.where(latent_now[:, None], renormalize(top_weights), first.to(top_weights.dtype))
        eos = think & ~forced_now & torch.isin(top1, eos_ids)
        record = think & ~forced_now & ~eos
        slot = s["think_tokens"][:, None]
        out.update({
            "think_ids": s["think_ids"].scatter(1, slot, top1[:, None]),
            "entropy": s["entropy"].scatter(1, slot, ent[:, None].to(s["entropy"].dtype)),
            "think_tokens": s["think_tokens"] + record.long(),
            "think_hist": self.think_matcher.push(s["think_hist"], top1, record),
            "low_entropy": low_entropy,
        })
        if cfg.return_topk:
            wide = slot[:, :, None].expand(-1, 1, self._width)
            out["topk_ids"] = s["topk_ids"].scatter(1, wide, mixture_ids[:, None])
            weights = mixture_weights[:, None].to(s["topk_weights"].dtype)
            out["topk_weights"] = s["topk_weights"].scatter(1, wide, weights)
        ended = record & self.think_matcher.matched(out["think_hist"])

        # ANSWER: sample; EOS ends the row unrecorded, a stop string or the budget after recording.
        answer = phase == ANSWER
        answer_eos = answer_stop = torch.zeros_like(answer)
        sampled = top1
        if cfg.max_answer_tokens > 0:  # (otherwise no row ever answers)
            sampled = self._answer_tokens(logits, rng.child(_ANSWER_STREAM))
            answer_eos = answer & torch.isin(sampled, eos_ids)
            answer_record = answer & ~answer_eos
            out["answer_ids"] = s["answer_ids"].scatter(1, s["answer_tokens"][:, None], sampled[:, None])
            out["answer_tokens"] = s["answer_tokens"] + answer_record.long()
            answer_stop = answer_record & (out["answer_tokens"] >= cfg.max_answer_tokens)
            if self.stop_matcher is not None:
                out["answer_hist"] = self.stop_matcher.push(s["answer_hist"], sampled, answer_record)
                answer_stop = answer_stop | (answer_record & self.stop_matcher.matched(out["answer_hist"]))

        # FORCED: one think_end token per step, starting in the step that forces it.
        think_end_ids = self._think_end_tensor
        forced = (phase == FORCED) | forced_now
        position = torch.where(forced_now, 0, s["forced"])
        forced_token = think_end_ids[position.clamp(max=len(self.think_end_ids) - 1)]
        out["forced"] = torch.where(forced, position + 1, s["forced"])
        forced_done = forced & (out["forced"] >= len(self.think_end_ids))

        to_answer = ANSWER if cfg.max_answer_tokens > 0 else DONE  # no answer wanted: done at once
        new_phase = torch.where(ended, to_answer, phase)
        new_phase = torch.where(forced, torch.where(forced_done, to_answer, FORCED), new_phase)
        if cfg.max_answer_tokens == 0:
            new_phase = torch.where(forced_now, DONE, new_phase)  # no need to feed think_end
        new_phase = torch.where(eos | answer_eos | answer_stop, DONE, new_phase)
        out["phase"] = new_phase
        reason = torch.where(ended, _THINK_END, s["reason"])
        reason = torch.where(eos, _EOS, torch.where(cold, _COLD_STOP, torch.where(budget, _BUDGET, reason)))
        out["reason"] = torch.where(switch_limit, _SWITCH_LIMIT, reason)

        # The next input of each row: concept token, or a hard token (think_end's top-1, forced, answer).
        hard = torch.where(forced, forced_token, torch.where(answer, sampled, top1))
        embeds = self.model.get_input_embeddings()(hard)
        fed_soft = record & ~ended
        thinking_input = soft.embeds
        if self.switch is not None:  # latent mixture or explicit token, blended with a marker at a switch
            mixture = embed_dense(self.model.get_input_embeddings(), probs)
            thinking_input = self.switch.inputs(latent_now, to_latent, to_explicit, mixture, soft.embeds,
                                                self._markers, s["think_tokens"])
            fed_soft = fed_soft & latent_now  # the probe compares only latent inputs
            out["swir_steps"] = s["swir_steps"].scatter(1, slot, fed_soft[:, None])
        inputs = torch.where((record & ~ended)[:, None], thinking_input.to(embeds.dtype), embeds)
        out["fed_soft"] = fed_soft
        if cfg.record_inputs:  # what was fed at this thinking step (slot = the step's index, as think_ids)
            out["cot_inputs"] = s["cot_inputs"].scatter(
                1, slot[:, :, None].expand(-1, 1, inputs.shape[-1]), inputs[:, None].to(s["cot_inputs"].dtype))
        out["step"] = s["step"] + 1
        return out, inputs, mixture_ids[:, :2]

    def _forward(self, inputs: torch.Tensor, s: dict[str, torch.Tensor], cache, kv_length: int | None):  # noqa: ANN001
        """The model step on ``inputs`` ``[B, D]`` at each row's position; next-token logits ``[B, V]``."""
        mask = s["mask"] if kv_length is None else s["mask"][:, :kv_length]
        out = self.model(inputs_embeds=inputs[:, None], attention_mask=mask, position_ids=s["position"][:, None],
                         use_cache=True, **{self._cache_argument: cache})
        return out.logits[:, -1]

    def _decode_step(self, s: dict[str, torch.Tensor], logits: torch.Tensor, cache,  # noqa: ANN001
                     kv_length: int | None = None) -> tuple[dict, torch.Tensor]:
        """One decode step: phase update, (probe,) model forward. With a static cache (``kv_length``
        ``None``: the whole preallocated mask) this is the unit ``compile`` captures as one graph."""
        s, inputs, alternatives = self._update_step(s, logits)
        s["mask"] = s["mask"].scatter(1, s["kv_index"], 1)
        if self.config.probe:
            probe_logits = self._probe(alternatives, inputs, s, cache, kv_length)
            logits = self._forward(inputs, s, cache, kv_length)
            self._record_js(s, probe_logits, logits)
        else:
            logits = self._forward(inputs, s, cache, kv_length)
        s["position"] = s["position"] + 1
        s["kv_index"] = s["kv_index"] + 1
        return s, logits

    def _compiled_step(self):  # noqa: ANN202
        if self._compiled is None:
            cuda = self.device.type == "cuda"
            self._compiled = torch.compile(self._decode_step, fullgraph=True, dynamic=False,
                                           mode="reduce-overhead" if cuda else None)
        return self._compiled

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        prefill: PrefillBuilder = plain_prefill,
        seeds: Sequence[int] | None = None,
    ) -> list[GenerationResult]:
        """Generate for a batch of prompts (already chat-formatted text, or token ids).

        Args:
            prompts: Prompt strings (tokenised without extra special tokens) or id lists.
            prefill: Builds the first forward's inputs; pass a soft prompt here to compose it.
            seeds: One integer seed per prompt (any integer, taken mod ``2^64``): a row's random
                draws depend only on its seed,
                so it gives the same output alone or in any batch. ``None``:
                :func:`default_seeds` (from torch's global generator and the row's position).

        Returns:
            One :class:`GenerationResult` per prompt, in input order.

        Raises:
            ValueError: For a number of seeds other than one per prompt, an empty prompt, a
                tokenizer padding on the right, or (static cache) a model or prompt the static
                cache cannot hold.
        """
        if len(prompts) == 0:
            return []
        cfg, tok, model = self.config, self.tokenizer, self.model
        batch_size = len(prompts)
        if seeds is None:
            seeds = default_seeds(batch_size)
        seeds = [(int(s) + 2**63) % 2**64 - 2**63 for s in seeds]  # any integer, as an int64 (mod 2^64)
        if len(seeds) != batch_size:
            raise ValueError(f"seeds has {len(seeds)} values for {batch_size} prompts; allowed: one seed per prompt")
        if tok.padding_side != "left":
            raise ValueError("the tokenizer must pad on the left for batched generation (padding_side='left')")
        if isinstance(prompts[0], str):
            batch = tok(list(prompts), add_special_tokens=False, padding=True, return_tensors="pt")
        else:
            batch = tok.pad({"input_ids": [list(p) for p in prompts]}, padding=True, return_tensors="pt")
        empty = [i for i, n in enumerate(batch["attention_mask"].sum(-1).tolist()) if n == 0]
        if empty:
            raise ValueError(f"prompt {empty[0]} is empty (no tokens); allowed: prompts of at least one token")
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        if self._eos_list != sorted(self.eos_ids):  # eos_ids was changed (compared on the host: no device read)
            self._eos_list = sorted(self.eos_ids)
            self._eos_tensor = torch.tensor(self._eos_list, dtype=torch.long, device=self.device)

        # The most steps a row can take: its thinking budget (the step that forces think_end feeds its
        # first token), the think_end tokens, the answer budget (its last step ends the row).
        max_steps = cfg.max_think_tokens + len(self.think_end_ids) + cfg.max_answer_tokens
        pre = prefill(model, ids, mask)
        prompt_length = pre.attention_mask.shape[1]
        static = cfg.cache == "static"
        if static:
            needed = prompt_length + max_steps
            cache_length = cfg.max_cache_len or -(-needed // _CACHE_ROUNDING) * _CACHE_ROUNDING
            if needed > cache_length:
                raise ValueError(
                    f"max_cache_len={cfg.max_cache_len} cannot hold the prompt ({prompt_length} positions, soft "
                    f"prompt included) plus {max_steps} decode steps (thinking + think_end + answer budgets); "
                    f"allowed: max_cache_len >= {needed}, or null to size it automatically"
                )
            pre.cache = to_static_cache(model, pre.cache, cache_length)
        else:
            cache_length = prompt_length + max_steps
        logits = prefill_logits(model, pre).contiguous()  # contiguous: the compiled step sees one layout
        cache = pre.cache

        state = self._initial_state(seeds, pre.attention_mask, pre.position_ids[:, -1] + 1, cache_length)
        compact = cfg.compact and not static and all(type(layer) in ROW_SELECTABLE_LAYERS for layer in cache.layers)
        compiled = cfg.compile and static
        step_fn = self._compiled_step() if compiled else self._decode_step
        finished: list[dict[str, torch.Tensor]] = []
        self.host_syncs = 0
        end, step = max_steps, 0
        while step < end:
            if compiled and self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs were cloned: a new step
            if compiled and step > 0:
                # Every step has the shapes of the first one, whose call checked the guards (or compiled).
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    state, logits = step_fn(state, logits, cache, None)
            else:
                state, logits = step_fn(state, logits, cache, None if static else prompt_length + step + 1)
            if compiled and self.device.type == "cuda":
                # A CUDA graph's outputs live in its memory pool and its next replay overwrites them: what the
                # next step reads (the state and the logits) is cloned first, as gpt-fast clones its next token.
                state = {k: v.clone() for k, v in state.items()}
                logits = logits.clone()
            step = self.steps = step + 1
            if step % cfg.sync_every == 0 and step < end:  # (at `end` every row is done: no need to look)
                # The only host read of the loop: phases and the steps each row can still take.
                phase, remaining = self._remaining_steps(state).cpu()
                self.host_syncs += 1
                done = phase == DONE
                if bool(done.all()):
                    break
                end = min(end, step + int(remaining.max()))  # no row can run longer: no check overshoots it
                if compact and bool(done.any()):
                    keep = torch.nonzero(~done)[:, 0].to(self.device)
                    gone = torch.nonzero(done)[:, 0].to(self.device)
                    finished.append({k: v.index_select(0, gone) for k, v in state.items() if v.dim() > 0})
                    state = {k: (v.index_select(0, keep) if v.dim() > 0 else v) for k, v in state.items()}
                    logits = logits.index_select(0, keep)
                    cache.batch_select_indices(keep)
        return self._results(finished + [state], batch_size)

    def _remaining_steps(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[2, B]``: each row's phase, and the most steps it can still take before it is done.

        THINK: the rest of the thinking budget, the think_end tokens (forcing takes one step
        when no answer is wanted) and the answer budget; FORCED: the think_end tokens left
        and the answer budget; ANSWER: the answer budget left; DONE: 0.
        """
        cfg, n_end = self.config, len(self.think_end_ids)
        forced_steps = n_end if cfg.max_answer_tokens > 0 else 1
        phase = s["phase"]
        remaining = torch.where(phase == THINK, cfg.max_think_tokens - s["think_tokens"] + forced_steps
                                + cfg.max_answer_tokens, 0)
        remaining = torch.where(phase == FORCED, n_end - s["forced"] + cfg.max_answer_tokens, remaining)
        remaining = torch.where(phase == ANSWER, cfg.max_answer_tokens - s["answer_tokens"], remaining)
        return torch.stack([phase, remaining])

    def _initial_state(self, seeds: list[int], mask: torch.Tensor, position: torch.Tensor,
                       cache_length: int) -> dict[str, torch.Tensor]:
        cfg, device = self.config, self.device
        b, prompt_length = mask.shape
        think_slots, answer_slots = cfg.max_think_tokens + 1, cfg.max_answer_tokens + 1  # +1: a scratch slot
        zeros = lambda: torch.zeros(b, dtype=torch.long, device=device)  # noqa: E731
        full_mask = torch.zeros(b, cache_length, dtype=mask.dtype, device=device)
        full_mask[:, :prompt_length] = mask
        s = {
            "seed": torch.tensor(seeds, dtype=torch.long, device=device),
            "row": torch.arange(b, device=device),
            "step": torch.zeros((), dtype=torch.long, device=device),
            "phase": zeros(), "think_tokens": zeros(), "answer_tokens": zeros(), "low_entropy": zeros(),
            "forced": zeros(), "reason": zeros(), "position": position.long(),
            "kv_index": torch.full((b, 1), prompt_length, dtype=torch.long, device=device),
            "mask": full_mask,
            "think_ids": torch.zeros(b, think_slots, dtype=torch.long, device=device),
            "entropy": torch.zeros(b, think_slots, dtype=torch.float32, device=device),
            "answer_ids": torch.zeros(b, answer_slots, dtype=torch.long, device=device),
            "think_hist": self.think_matcher.empty(b),
            "fed_soft": torch.zeros(b, dtype=torch.bool, device=device),
        }
        if self.stop_matcher is not None:
            s["answer_hist"] = self.stop_matcher.empty(b)
        if cfg.return_topk:
            s["topk_ids"] = torch.zeros(b, think_slots, self._width, dtype=torch.long, device=device)
            s["topk_weights"] = torch.zeros(b, think_slots, self._width, dtype=self._weight_dtype, device=device)
        if cfg.record_inputs:
            weight = self.model.get_input_embeddings().weight
            s["cot_inputs"] = torch.zeros(b, think_slots, weight.shape[1], dtype=weight.dtype, device=device)
        if self.switch is not None:
            s.update(self.switch.initial_state(b, device))
            s["swir_steps"] = torch.zeros(b, think_slots, dtype=torch.bool, device=device)
        if cfg.probe:
            s["js"] = torch.zeros(b, 2, think_slots, dtype=torch.float32, device=device)
            s["soft_steps"] = torch.zeros(b, think_slots, dtype=torch.bool, device=device)
        return s

    def _probe(self, alternatives, inputs, s, cache, kv_length) -> list[torch.Tensor]:  # noqa: ANN001
        """Next-token logits after the top-1 and top-2 one-hot inputs, leaving the cache as it was.

        Every row is fed (rows not fed a concept token keep their real input; their values are
        not recorded). The cache is restored from a snapshot, not cropped: a full
        sliding-window layer has already evicted what a crop would need (see
        :mod:`softtok.generation.cache`).
        """
        embed, out = self.model.get_input_embeddings(), []
        before = snapshot_cache(cache)
        for rank in (0, 1):
            alt = torch.where(s["fed_soft"][:, None], embed(alternatives[:, rank]).to(inputs.dtype), inputs)
            out.append(self._forward(alt, s, cache, kv_length))
            restore_cache(cache, before)
        return out

    def _record_js(self, s, probe_logits, logits) -> None:  # noqa: ANN001
        """Write this step's divergences at each concept-token row's step index."""
        slot = (s["think_tokens"] - 1).clamp_min(0)[:, None]  # the token just recorded
        fed = s["fed_soft"][:, None]
        for rank, alt_logits in enumerate(probe_logits):
            value = js_divergence(alt_logits, logits)[:, None]
            s["js"][:, rank] = torch.where(fed, s["js"][:, rank].scatter(1, slot, value), s["js"][:, rank])
        s["soft_steps"] = s["soft_steps"] | (fed & (torch.arange(s["soft_steps"].shape[1], device=slot.device) == slot))

    def _results(self, parts: list[dict[str, torch.Tensor]], batch_size: int) -> list[GenerationResult]:
        """Move the outputs to the host once and build one :class:`GenerationResult` per row."""
        skip = ("mask", "think_hist", "answer_hist", "cot_inputs")
        names = [k for k in parts[-1] if parts[-1][k].dim() > 0 and k not in skip]
        merged = {k: torch.cat([p[k] for p in parts]) for k in names}
        order = torch.argsort(merged["row"])
        host = {k: v[order].tolist() for k, v in merged.items()}
        cot_inputs = torch.cat([p["cot_inputs"] for p in parts])[order].cpu() if "cot_inputs" in parts[-1] else None
        cfg, tok = self.config, self.tokenizer
        results = []
        for i in range(batch_size):
            n, m = host["think_tokens"][i], host["answer_tokens"][i]
            res = GenerationResult(
                think_tokens=n, answer_tokens=m, think_end=END_REASONS[host["reason"][i]],
                think_ids=host["think_ids"][i][:n], entropy=host["entropy"][i][:n],
                answer_ids=host["answer_ids"][i][:m], seed=host["seed"][i],
            )
            res.thinking = tok.decode(res.think_ids, skip_special_tokens=False)
            if res.think_end in FORCED_REASONS:
                res.thinking += cfg.think_end
            res.answer = tok.decode(res.answer_ids, skip_special_tokens=True)
            if cfg.return_topk:
                res.topk_ids, res.topk_weights = host["topk_ids"][i][:n], host["topk_weights"][i][:n]
            if cot_inputs is not None:
                res.cot_inputs = cot_inputs[i, :n]
            if self.switch is not None:
                res.latent, res.switch_count = host["swir_steps"][i][:n], host["swir_switches"][i]
            if cfg.probe:
                soft = [j for j, fed in enumerate(host["soft_steps"][i][:n]) if fed]
                if soft:
                    res.js_top1 = sum(host["js"][i][0][j] for j in soft) / len(soft)
                    res.js_top2 = sum(host["js"][i][1][j] for j in soft) / len(soft)
            results.append(res)
        return results
