"""The tiny reasoning model trained in-repo: a character tokenizer and a GPT-2-shaped config.

A 1-5 M-parameter model trained for a minute on worked arithmetic solutions
(``configs/continuous_cot/pretrain_tiny.yaml``, :class:`~softtok.modules.SFTModule`) is a
fast vehicle for RL experiments: it writes a chain of thought (partial sums), ends it with
``Final answer:`` and answers, well below ceiling, on CPU in milliseconds per step.

The tokenizer is fixed by code, so it exists before any training: one token per printable
ASCII character and newline (so every digit is its own token, as in Llama), one token per
word of :data:`WORDS` (the words of reasoning-gym's arithmetic questions, with and without
a leading space; other words are spelled in characters), ``Final answer:`` as one token
(the ``think_end`` of the recipes), ``<|endoftext|>`` as BOS, EOS and padding, and
``<unk>`` for other characters. Whole words keep the prompts short (a chain_sum prompt is 30
tokens instead of 75 characters), which makes training about twice as fast. Its chat
template is plain text::

    [system\\n]Q: <question>\\nA:\\n<answer><|endoftext|>
"""

from __future__ import annotations

import string
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import CONFIG_MAPPING, PretrainedConfig, PreTrainedTokenizerFast

#: The softtok name of the tiny reasoning model (saved under ``$SOFTTOK_CACHE/tiny-reasoner``).
TINY_REASONER = "tiny-reasoner"
#: Its end-of-thought marker: one token of :func:`char_tokenizer`.
THINK_END = "Final answer:"
EOS = "<|endoftext|>"
UNK = "<unk>"
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ m['content'] }}{{ '\\n' }}"
    "{%- elif m['role'] == 'user' -%}Q: {{ m['content'] }}{{ '\\n' }}"
    "{%- else -%}A:{{ '\\n' }}{{ m['content'] }}" + EOS +
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}A:{{ '\\n' }}{%- endif -%}"
)
#: Words that are one token (with or without a leading space): those of the arithmetic questions.
WORDS = ("State", "the", "final", "answer", "to", "following", "arithmetic", "problem", "Solve", "multiplication",
         "Give", "only", "result", "as", "your", "Calculate", "What", "is")
#: The default architecture of :data:`TINY_REASONER` (1.85 M parameters). GPT-2, not Llama: with
#: learned absolute positions the operands of a question sit at fixed positions (the question's
#: words are fixed), which the model learns to copy within a few hundred steps; a same-size
#: Llama (rotary positions) learned it much more slowly in a design probe.
TINY_ARCHITECTURE: dict[str, Any] = {
    "model_type": "gpt2", "n_embd": 192, "n_layer": 4, "n_head": 4, "n_inner": 768, "n_positions": 256,
    "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
}


def char_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer of the tiny model (deterministic: the same ids on every call).

    Ids: 0 ``<|endoftext|>``, 1 ``<unk>``, then newline and the 95 printable ASCII
    characters, then the words of :data:`WORDS` and each with a leading space, then
    ``Final answer:``. Other characters map to ``<unk>``. Decoding gives back the text exactly.
    """
    chars = ["\n", *(c for c in string.printable if c.isprintable())]
    pieces = [*chars, *WORDS, *(" " + w for w in WORDS)]
    vocab = {EOS: 0, UNK: 1, **{c: i + 2 for i, c in enumerate(pieces)}}
    # A piece is a word (letters, with its leading space) or one other character; a word of the
    # vocabulary is one token, any other is spelled (WordPiece's longest match over characters).
    backend = Tokenizer(models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="",
                                         max_input_chars_per_word=1000))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[A-Za-z]+|[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(EOS, special=True, normalized=False), AddedToken(UNK, special=True)])
    backend.add_tokens([AddedToken(THINK_END, normalized=False, single_word=False)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                        unk_token=UNK, chat_template=CHAT_TEMPLATE, padding_side="left",
                                        clean_up_tokenization_spaces=False)
    return tokenizer


def tiny_config(tokenizer: PreTrainedTokenizerFast, architecture: dict[str, Any] | None = None) -> PretrainedConfig:
    """A model config for ``tokenizer``'s vocabulary and special tokens from ``architecture``.

    Args:
        tokenizer: The tokenizer (it fixes ``vocab_size`` and the BOS / EOS / pad ids).
        architecture: ``model_type`` (a transformers model type: ``gpt2``, ``llama``, ``qwen2``...)
            and fields of its config (``n_embd``... for GPT-2, ``hidden_size``... for Llama);
            ``None``: :data:`TINY_ARCHITECTURE`.

    Raises:
        ValueError: No or an unknown ``model_type``, a key that is not a field of its config,
            or one that the tokenizer fixes.
    """
    architecture = dict(TINY_ARCHITECTURE if architecture is None else architecture)
    model_type = architecture.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"architecture model_type={model_type!r} must be a transformers model type, e.g. "
                         "'gpt2' or 'llama'")
    fixed = {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"} & set(architecture)
    if fixed:
        raise ValueError(f"architecture must not set {sorted(fixed)}: the tokenizer fixes them")
    config_class = CONFIG_MAPPING[model_type]
    unknown = sorted(set(architecture) - set(config_class().to_dict()) - set(config_class.attribute_map))
    if unknown:
        raise ValueError(f"architecture keys {unknown} are not fields of {config_class.__name__} "
                         f"(model_type={model_type!r})")
    return config_class(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        tie_word_embeddings=True, **architecture)
