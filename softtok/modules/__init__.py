"""LightningModules: thin wrappers that connect softtok's PyTorch core to the Trainer."""

from softtok.modules.compression import CompressionModule
from softtok.modules.continuous_cot import ContinuousCoTModule
from softtok.modules.distil import LayerDistillationModule
from softtok.modules.sft import SFTModule
from softtok.modules.soft_prompt import SoftPromptModule
from softtok.modules.soft_thinking import DEFAULT_SYSTEM_PROMPT, SoftThinkingModule
from softtok.modules.transfer import PromptTransferModule, TransferDataModule

__all__ = [
    "CompressionModule",
    "ContinuousCoTModule",
    "DEFAULT_SYSTEM_PROMPT",
    "LayerDistillationModule",
    "PromptTransferModule",
    "SFTModule",
    "SoftPromptModule",
    "SoftThinkingModule",
    "TransferDataModule",
]
