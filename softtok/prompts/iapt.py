"""Instruction-aware prompts (IAPT-style): soft tokens generated from each instruction.

IAPT (Zhu et al., ACL 2024) gives every layer a small generator that reads the
instruction's hidden states *before that layer* and produces a few soft tokens:
down-projection, attention pooling to ``n_virtual`` tokens, a learned rational
activation, up-projection. softtok's variant, in one forward pass:

* a static prompt of ``n_virtual`` embeddings enters at the input, after the padding
  (the prompt-tuning layout of :mod:`softtok.prompts.base`);
* a forward pre-hook on each chosen decoder layer ``l`` pools the hidden states of the
  instruction tokens, ``h_l[instruction]``, and **adds** the generator's output to the
  hidden states of the virtual positions, ``h_l[virtual] += g_l(h_l[instruction])``.
  IAPT replaces them instead; adding keeps the residual stream intact and, with the
  up-projection initialised to zero, training starts from plain prompt tuning.

Causality holds: the virtual positions come before the instruction, so an instruction
token at layer ``l`` sees the virtual tokens of layer ``l - 1`` and earlier, never its
own layer's. Only instruction tokens are pooled (during training: the real tokens
without a label), never the answer.

Generation: the hooks must see the whole instruction, so the prefill runs the full
prompt once with hooks and the cache and hands the decoder the cache and the last
position's logits (:attr:`~softtok.generation.prefill.Prefill.logits`): the decoder needs
no hooks, the virtual tokens' keys and values sit in the cache like any others, and no
cache step is ever undone (which sliding-window layers could not do once full).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from softtok.generation.prefill import Prefill, positions_from_mask
from softtok.prompts._arch import ModelInfo, decoder_layers
from softtok.prompts.base import Injected, SoftPrompt, default_instruction_mask, insert_after_padding
from softtok.prompts.config import IAPTConfig
from softtok.prompts.tuning import init_embeddings

# Coefficients of a (5, 4) "safe" Pade activation fitted to GELU on [-5, 5] (max error 0.055).
_RATIONAL_NUM = (0.032147, 0.516612, 0.341137, 0.091613, 0.019228, 0.00218)
_RATIONAL_DEN = (0.078241, 0.089056, 0.038052, 0.0)


class RationalActivation(nn.Module):
    """Learned rational activation ``P(x) / (1 + |b_1 x| + ... + |b_4 x^4|)`` with ``deg P = 5``.

    The "safe" Pade activation unit (Molina et al., 2020), as IAPT uses: the denominator is
    at least 1, so there are no poles. Initialised near GELU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.numerator = nn.Parameter(torch.tensor(_RATIONAL_NUM))
        self.denominator = nn.Parameter(torch.tensor(_RATIONAL_DEN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num = self.numerator[-1]
        for coef in reversed(self.numerator[:-1]):  # Horner
            num = num * x + coef
        den = 1.0
        power = x
        for coef in self.denominator:
            den = den + (coef * power).abs()
            power = power * x
        return num / den


def make_activation(name: str) -> nn.Module:
    """The activation module for an :data:`~softtok.prompts.config.ACTIVATIONS` name."""
    table = {"rational": RationalActivation, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU,
             "identity": nn.Identity}
    if name not in table:
        raise ValueError(f"activation={name!r} is not allowed; allowed: {', '.join(table)}")
    return table[name]()


class PromptGenerator(nn.Module):
    """Pools instruction hidden states ``[B, T, D]`` into ``n_virtual`` soft-token deltas ``[B, K, D]``.

    ``RMS-normalise -> down-projection -> attention pooling (K learned queries, instruction
    tokens only) -> activation -> up-projection``. The normalisation makes one generator
    work at any depth (hidden-state scale grows with depth); the up-projection starts at
    zero. Runs in fp32 whatever the model dtype.

    Args:
        hidden_size: ``D``.
        bottleneck: Width ``r`` of the pooled representation.
        n_virtual: ``K``, pooled tokens.
        activation: Activation name.
    """

    def __init__(self, hidden_size: int, bottleneck: int, n_virtual: int, activation: str = "rational") -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.queries = nn.Parameter(torch.randn(n_virtual, bottleneck) / math.sqrt(bottleneck))
        self.act = make_activation(activation)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor, instruction_mask: torch.Tensor) -> torch.Tensor:
        x = hidden.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        x = self.down(x)  # [B, T, r]
        scores = torch.einsum("btr,kr->bkt", x, self.queries) / math.sqrt(x.shape[-1])
        keep = instruction_mask.bool()[:, None, :]
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * keep  # a row without instruction pools nothing
        return self.up(self.act(weights @ x))  # [B, K, D]


class InstructionAwarePrompt(SoftPrompt):
    """Instruction-aware soft prompt (see the module docstring).

    Args:
        config: ``n_virtual``, static-prompt init, generator shape and placement.
        model: The base model (read for shapes; not stored).
        tokenizer: Needed for ``init="text"``.

    Attributes:
        prompt_embeddings: ``[n_virtual, D]`` fp32 static prompt.
        generators: One :class:`PromptGenerator` per hooked layer (a single one if shared).
        layer_ids: The decoder layers whose input gets a generated delta.
    """

    def __init__(
        self,
        config: IAPTConfig,
        model: PreTrainedModel | ModelInfo,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__(config, model)
        info = self.info
        if isinstance(model, ModelInfo):  # shapes only (loading a checkpoint): zeros, then load_state_dict
            embeddings = torch.zeros(config.n_virtual, info.hidden_size)
        else:
            embeddings = init_embeddings(config, model, tokenizer, config.n_virtual)
        self.prompt_embeddings = nn.Parameter(embeddings)
        self.layer_ids = list(range(info.num_layers)) if config.deep else [0]
        count = 1 if config.share_generators else len(self.layer_ids)
        self.generators = nn.ModuleList(
            PromptGenerator(info.hidden_size, config.bottleneck, config.n_virtual, config.activation)
            for _ in range(count)
        ).to(embeddings.device)

    def generator(self, i: int) -> PromptGenerator:
        """The generator of the ``i``-th hooked layer."""
        return self.generators[0 if len(self.generators) == 1 else i]

    def inject(
        self,
        model: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> Injected:
        self._check(model, input_ids, attention_mask)
        if instruction_mask is None:
            instruction_mask = default_instruction_mask(attention_mask, labels)
        elif instruction_mask.shape != input_ids.shape:
            raise ValueError(f"instruction_mask {tuple(instruction_mask.shape)} must match input_ids "
                             f"{tuple(input_ids.shape)}")
        instruction_mask = instruction_mask.bool() & attention_mask.bool()
        embeds = model.get_input_embeddings()(input_ids)
        prompt = self.prompt_embeddings[None].expand(input_ids.shape[0], -1, -1)
        out, mask, labels, instr, text_index, prompt_index = insert_after_padding(
            embeds, prompt, attention_mask, labels, instruction_mask
        )
        return Injected(out, mask, positions_from_mask(mask), labels, None, text_index, prompt_index, instr)

    @contextmanager
    def hooks(self, model: PreTrainedModel, injected: Injected) -> Iterator[None]:
        """Install the generator pre-hooks for one forward pass over ``injected``."""
        layers = decoder_layers(model)
        length = injected.inputs_embeds.shape[1]
        index = injected.prompt_index
        instruction = injected.instruction_mask

        def make_hook(generator: PromptGenerator):  # noqa: ANN202
            def hook(module, args, kwargs):  # noqa: ANN001, ANN202
                hidden = args[0] if args else kwargs["hidden_states"]
                if hidden.shape[1] != length:  # not the pass we were installed for (a decode step)
                    return None
                delta = generator(hidden, instruction).to(hidden.dtype)
                hidden = hidden.scatter_add(1, index[..., None].expand(-1, -1, hidden.shape[-1]), delta)
                if args:
                    return (hidden, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hidden}

            return hook

        handles = [
            layers[layer].register_forward_pre_hook(make_hook(self.generator(i)), with_kwargs=True)
            for i, layer in enumerate(self.layer_ids)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Prefill:
        """Prefill of a left-padded batch, already run: the cache holds the whole prompt, with its logits."""
        injected = self.inject(model, input_ids, attention_mask)
        injected.cache = DynamicCache(config=model.config)
        logits = self.model_forward(model, injected, logits_to_keep=1).logits[:, -1]
        return Prefill(
            injected.inputs_embeds, injected.attention_mask, injected.position_ids, injected.cache, logits=logits
        )
