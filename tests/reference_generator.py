"""The reference decode loop (tests only): softtok's original per-step host loop, kept as the oracle
that the device-resident engine (:mod:`softtok.generation.generator`) must reproduce token for token.

It checks every row on the host at every step, decodes the tail text to find ``think_end``
and stop strings, and drops finished rows from the batch. Only deterministic modes are
compared (random draws are made differently: see :mod:`softtok.soft.random`).

The batched Soft Thinking decode loop over any Hugging Face causal LM.

One prefill, then one model step per token with the KV cache. Each row runs its own
phase machine::

    THINK --(top-1 text ends with think_end)----------------> ANSWER --(EOS / stop / budget)--> done
    THINK --(Cold Stop or thinking budget: force think_end)--> ANSWER
    THINK --(top-1 is EOS)------------------------------------------------------------------> done

In THINK the input is the concept token from :class:`~softtok.soft.SoftEmbedding`
(a one-hot in ``discrete`` mode); forced and answer tokens are ordinary embeddings.
Finished rows are dropped from the batch (and the cache), so they stop costing compute.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from softtok.generation.cache import check_rows_removable, restore_cache, snapshot_cache
from softtok.generation.generator import GenerationResult, SoftThinkingGenerator, js_divergence
from softtok.generation.prefill import PrefillBuilder, plain_prefill, prefill_logits
from softtok.soft.filters import filter_candidates, tempered_probs

THINK, FORCED, ANSWER = 0, 1, 2


def tail_tokens(strings: Sequence[str]) -> int:
    """How many trailing tokens to decode so that any of ``strings`` ending there is in the text.

    Every token decodes to at least one UTF-8 byte, so a string of ``n`` bytes spans at most
    ``n`` tokens; one more covers a token a decoder strips to nothing, one more is margin.
    """
    return max((len(s.encode("utf-8")) + 2 for s in strings), default=0)


class _Row:
    """Per-row bookkeeping on the Python side (token lists, counters)."""

    def __init__(self, probe: bool, topk: bool) -> None:
        self.result = GenerationResult(topk_ids=[] if topk else None, topk_weights=[] if topk else None)
        self.phase = THINK
        self.forced: list[int] = []
        self.low_entropy = 0
        self.js: tuple[list[float], list[float]] | None = ([], []) if probe else None


class ReferenceGenerator(SoftThinkingGenerator):
    """The per-step host loop, on the engine's constructor (mixers, samplers, think_end ids, EOS ids)."""

    def _tail_text(self, ids: list[int], n: int) -> str:
        """The decoded text of the last ``n`` of ``ids`` (see :func:`tail_tokens`)."""
        return self.tokenizer.decode(ids[-n:], skip_special_tokens=False)

    def _ref_answer_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """Sample (or argmax) the answer-phase tokens, ``[N]``."""
        cfg = self.config.answer_filters
        cand = filter_candidates(tempered_probs(logits, cfg.temperature), cfg)
        return self.answer_sampler(cand.ids, cand.weights)[0][:, 0]

    def _ref_forward(self, embeds, mask, positions, cache) -> torch.Tensor:
        out = self.model(
            inputs_embeds=embeds[:, None], attention_mask=mask, position_ids=positions[:, None], cache=cache,
            use_cache=True,
        )
        return out.logits[:, -1]

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        prefill: PrefillBuilder = plain_prefill,
    ) -> list[GenerationResult]:
        """Generate for a batch of prompts (already chat-formatted text, or token ids).

        Args:
            prompts: Prompt strings (tokenised without extra special tokens) or id lists.
            prefill: Builds the first forward's inputs; pass a soft prompt here to compose it.

        Returns:
            One :class:`GenerationResult` per prompt, in input order.
        """
        if len(prompts) == 0:
            return []
        cfg, tok, model = self.config, self.tokenizer, self.model
        device = model.get_input_embeddings().weight.device
        if isinstance(prompts[0], str):
            batch = tok(list(prompts), add_special_tokens=False, padding=True, return_tensors="pt")
        else:
            batch = tok.pad({"input_ids": [list(p) for p in prompts]}, padding=True, return_tensors="pt")
        if tok.padding_side != "left":
            raise ValueError("the tokenizer must pad on the left for batched generation (padding_side='left')")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        rows = [_Row(cfg.probe, cfg.return_topk) for _ in range(ids.shape[0])]
        active = list(range(ids.shape[0]))  # original row index of each batch position

        pre = prefill(model, ids, mask)
        check_rows_removable(pre.cache, ids.shape[0])
        logits = prefill_logits(model, pre)
        cache, mask = pre.cache, pre.attention_mask
        positions = pre.position_ids[:, -1] + 1
        embed = model.get_input_embeddings()
        think_tail, stop_tail = tail_tokens([cfg.think_end]), tail_tokens(cfg.stop_strings)

        while active:
            phases = [rows[r].phase for r in active]
            think_pos = [i for i, p in enumerate(phases) if p == THINK]
            answer_pos = [i for i, p in enumerate(phases) if p == ANSWER]
            next_ids = [0] * len(active)
            soft_rows: list[int] = []  # batch positions fed a soft embedding
            keep = [True] * len(active)

            if think_pos:
                step = self.soft(logits[think_pos])
                top1 = step.token.top1.tolist()
                ent = step.entropy.tolist()
                if cfg.return_topk:  # one host transfer per step, not one per row
                    topk_ids, topk_weights = step.token.ids.tolist(), step.token.weights.tolist()
                for j, i in enumerate(think_pos):
                    row = rows[active[i]]
                    res = row.result
                    row.low_entropy = row.low_entropy + 1 if ent[j] < cfg.cold_stop_entropy else 0
                    if res.think_tokens >= cfg.max_think_tokens or row.low_entropy >= cfg.cold_stop_length:
                        res.think_end = "budget" if res.think_tokens >= cfg.max_think_tokens else "cold_stop"
                        row.phase, row.forced = FORCED, list(self.think_end_ids)
                        keep[i] = cfg.max_answer_tokens > 0  # no answer wanted: no need to feed think_end
                        continue
                    if top1[j] in self.eos_ids:
                        res.think_end, keep[i] = "eos", False
                        continue
                    res.think_ids.append(top1[j])
                    res.entropy.append(ent[j])
                    res.think_tokens += 1
                    if cfg.return_topk:
                        res.topk_ids.append(topk_ids[j])
                        res.topk_weights.append(topk_weights[j])
                    if cfg.think_end in self._tail_text(res.think_ids, think_tail):
                        # The think-end token itself enters as a hard token.
                        res.think_end, row.phase, next_ids[i] = "think_end", ANSWER, top1[j]
                        keep[i] = cfg.max_answer_tokens > 0
                    else:
                        soft_rows.append(i)
                soft_embeds = step.embeds
                if cfg.probe and soft_rows:
                    alternatives = step.token.ids[[think_pos.index(i) for i in soft_rows], :2].tolist()

            if answer_pos:
                sampled = self._ref_answer_tokens(logits[answer_pos]).tolist()
                for j, i in enumerate(answer_pos):
                    res = rows[active[i]].result
                    if sampled[j] in self.eos_ids:
                        keep[i] = False
                        continue
                    res.answer_ids.append(sampled[j])
                    res.answer_tokens += 1
                    next_ids[i] = sampled[j]
                    stopped = any(s in self._tail_text(res.answer_ids, stop_tail) for s in cfg.stop_strings)
                    if stopped or res.answer_tokens >= cfg.max_answer_tokens:
                        keep[i] = False

            for i, r in enumerate(active):  # forced think-end tokens, one per step
                row = rows[r]
                if row.phase == FORCED and keep[i]:
                    next_ids[i] = row.forced.pop(0)
                    if not row.forced:
                        row.phase = ANSWER
                        keep[i] = cfg.max_answer_tokens > 0

            inputs = embed(torch.tensor(next_ids, device=device))
            if soft_rows:
                where = torch.tensor([think_pos.index(i) for i in soft_rows], device=device)
                inputs[soft_rows] = soft_embeds[where].to(inputs.dtype)

            if not all(keep):
                kept = [i for i, k in enumerate(keep) if k]
                active = [active[i] for i in kept]
                if not active:
                    break
                index = torch.tensor(kept, device=device)
                cache.batch_select_indices(index)
                inputs, mask, positions = inputs[index], mask[index], positions[index]
                soft_rows = [kept.index(i) for i in soft_rows if keep[i]]

            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            if cfg.probe and soft_rows:
                probe_logits = self._ref_probe(dict(zip(soft_rows, alternatives, strict=True)), inputs, mask, positions,
                                           cache)
                logits = self._ref_forward(inputs, mask, positions, cache)
                self._ref_record_js(rows, active, soft_rows, probe_logits, logits)
            else:
                logits = self._ref_forward(inputs, mask, positions, cache)
            positions = positions + 1

        return [self._ref_finish(row) for row in rows]

    def _ref_probe(self, alternatives, inputs, mask, positions, cache) -> list[torch.Tensor]:
        """Next-token logits after each one-hot alternative input, leaving the cache as it was.

        The cache is restored from a snapshot, not cropped: a full sliding-window layer has
        already evicted what a crop would need (see :mod:`softtok.generation.cache`).
        """
        embed, out = self.model.get_input_embeddings(), []
        soft_rows = list(alternatives)
        before = snapshot_cache(cache)
        for rank in (0, 1):
            alt = inputs.clone()
            ids = torch.tensor([alternatives[i][rank] for i in soft_rows], device=inputs.device)
            alt[soft_rows] = embed(ids).to(alt.dtype)
            out.append(self._ref_forward(alt, mask, positions, cache)[soft_rows])
            restore_cache(cache, before)
        return out

    def _ref_record_js(self, rows, active, soft_rows, probe_logits, logits) -> None:
        soft_logits = logits[soft_rows]
        for rank, alt_logits in enumerate(probe_logits):
            for i, value in zip(soft_rows, js_divergence(alt_logits, soft_logits).tolist(), strict=True):
                rows[active[i]].js[rank].append(value)

    def _ref_finish(self, row: _Row) -> GenerationResult:
        res, tok = row.result, self.tokenizer
        res.thinking = tok.decode(res.think_ids, skip_special_tokens=False)
        if res.think_end in ("budget", "cold_stop"):
            res.thinking += self.config.think_end
        res.answer = tok.decode(res.answer_ids, skip_special_tokens=True)
        if row.js is not None and row.js[0]:
            res.js_top1 = sum(row.js[0]) / len(row.js[0])
            res.js_top2 = sum(row.js[1]) / len(row.js[1])
        return res
