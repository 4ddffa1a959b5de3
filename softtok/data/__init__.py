"""LightningDataModules: reasoning problems as raw records, instruction/answer pairs for prompt training,
synthetic long-context QA for context compression."""

from softtok.data.instruct import InstructDataModule
from softtok.data.long_context import LongContextQADataModule
from softtok.data.reasoning import FORMATS, ReasoningDataModule, RecordDataset

__all__ = ["FORMATS", "InstructDataModule", "LongContextQADataModule", "ReasoningDataModule", "RecordDataset"]
