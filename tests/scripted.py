"""A scripted causal LM: its next-token logits depend only on the position, so tests can
construct exact event sequences (think end, EOS, low entropy) per row."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from transformers import GenerationConfig, LlamaConfig


class ScriptedLM(nn.Module):
    """``logits[b, t] = script[position_ids[b, t]]``; the KV cache is unused.

    Positions past the script repeat its last row: the engine keeps stepping finished rows
    (their outputs ignored) until its next host check.

    Args:
        script: ``[P, V]`` logits per position.
    """

    def __init__(self, script: torch.Tensor, eos_token_id: int = 1) -> None:
        super().__init__()
        self.script = script
        self.embed = nn.Embedding(script.shape[1], 8)
        self.config = LlamaConfig(vocab_size=script.shape[1], num_hidden_layers=0)
        self.generation_config = GenerationConfig(eos_token_id=eos_token_id)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, inputs_embeds, attention_mask, position_ids, cache=None, use_cache=True, logits_to_keep=0):
        return SimpleNamespace(logits=self.script[position_ids.clamp(max=self.script.shape[0] - 1)], cache=cache)


def peaked(vocab: int, token: int, height: float = 30.0) -> torch.Tensor:
    """Logits with (almost) all mass on ``token``."""
    row = torch.zeros(vocab)
    row[token] = height
    return row
