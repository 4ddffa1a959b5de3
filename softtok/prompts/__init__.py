"""Soft prompts: prompt tuning, prefix tuning and instruction-aware prompts, plus PEFT interop.

Plain PyTorch (no Lightning). Every prompt module takes the base model as an argument
instead of owning it, so its ``state_dict`` is the prompt only, and calling it is the
:class:`~softtok.generation.prefill.PrefillBuilder` contract, so it composes with the
Soft Thinking generator.
"""

from softtok.prompts._arch import ModelInfo
from softtok.prompts.base import (
    IGNORE_INDEX,
    Injected,
    SoftPrompt,
    causal_lm_loss,
    insert_after_padding,
    mark_only_prompt_trainable,
    prompt_state_dict,
)
from softtok.prompts.checkpoint import prompt_from_checkpoint
from softtok.prompts.config import (
    ACTIVATIONS,
    CONFIGS,
    INITS,
    IAPTConfig,
    PrefixTuningConfig,
    PromptConfig,
    PromptTuningConfig,
    config_from_dict,
    config_to_class_path,
)
from softtok.prompts.generate import greedy_generate
from softtok.prompts.iapt import InstructionAwarePrompt, PromptGenerator, RationalActivation
from softtok.prompts.peft_io import export_peft, load_peft_adapter
from softtok.prompts.prefix import PrefixTuning
from softtok.prompts.tuning import PromptTuning

__all__ = [
    "ACTIVATIONS",
    "CONFIGS",
    "IAPTConfig",
    "IGNORE_INDEX",
    "INITS",
    "Injected",
    "InstructionAwarePrompt",
    "ModelInfo",
    "PrefixTuning",
    "PrefixTuningConfig",
    "PromptConfig",
    "PromptGenerator",
    "PromptTuning",
    "PromptTuningConfig",
    "RationalActivation",
    "SoftPrompt",
    "causal_lm_loss",
    "config_from_dict",
    "config_to_class_path",
    "export_peft",
    "greedy_generate",
    "insert_after_padding",
    "load_peft_adapter",
    "mark_only_prompt_trainable",
    "prompt_from_checkpoint",
    "prompt_state_dict",
]
