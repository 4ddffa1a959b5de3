"""LightningDataModules: reasoning problems as raw records, instruction/answer pairs for prompt training."""

from softtok.data.instruct import InstructDataModule
from softtok.data.reasoning import FORMATS, ReasoningDataModule, RecordDataset

__all__ = ["FORMATS", "InstructDataModule", "ReasoningDataModule", "RecordDataset"]
