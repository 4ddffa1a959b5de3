"""LightningModules: thin wrappers that connect softtok's PyTorch core to the Trainer."""

from softtok.modules.continuous_cot import ContinuousCoTModule
from softtok.modules.soft_prompt import SoftPromptModule
from softtok.modules.soft_thinking import DEFAULT_SYSTEM_PROMPT, SoftThinkingModule

__all__ = ["ContinuousCoTModule", "DEFAULT_SYSTEM_PROMPT", "SoftPromptModule", "SoftThinkingModule"]
