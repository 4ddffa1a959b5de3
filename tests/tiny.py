"""Tiny random causal LMs and a character tokenizer, built in code (no downloads)."""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

SPECIALS = ["<pad>", "<eos>", "<bos>", "<think>", "</think>"]
CHARS = list(string.ascii_letters + string.digits + " .,:;!?+-*/=()#\n")
VOCAB = SPECIALS + CHARS
CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant: {% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer with ``</think>`` as one special token; pads on the left."""
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        additional_special_tokens=["<think>", "</think>"], padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _configs() -> dict:
    common = dict(vocab_size=len(VOCAB), initializer_range=0.2, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return {
        "llama": LlamaConfig(**common, **small, num_key_value_heads=2, tie_word_embeddings=True),
        "qwen2": Qwen2Config(**common, **small, num_key_value_heads=2),
        "gpt2": GPT2Config(**common, n_embd=64, n_layer=2, n_head=4, n_positions=512),
        "gemma": Gemma3TextConfig(**common, **small, num_key_value_heads=2, head_dim=16,
                                  sliding_window=64, layer_types=["full_attention", "full_attention"]),
    }


ARCHS = tuple(_configs())

#: Five (question, answer) problems for end-to-end recipe tests on a tiny saved model (see conftest).
QUESTIONS = [("1 + 1 =", "2"), ("2 + 3 =", "5"), ("Final answer: 7", "7"), ("9 - 4 =", "5"), ("a", "3")]


def tiny_sliding_model(window: int = 8, seed: int = 0) -> torch.nn.Module:
    """A tiny Gemma 3 text model whose first layer is sliding-window attention (a hybrid cache)."""
    common = dict(vocab_size=len(VOCAB), initializer_range=0.2, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    config = Gemma3TextConfig(**common, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=window,
                              layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def tiny_model(arch: str = "llama", seed: int = 0) -> torch.nn.Module:
    """A deterministic random model of one of :data:`ARCHS`, fp32, eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_configs()[arch], dtype=torch.float32).eval()
    return model
