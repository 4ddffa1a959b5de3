"""LightningDataModules yielding raw reasoning problems (reasoning-gym tasks, JSONL files)."""

from softtok.data.reasoning import FORMATS, ReasoningDataModule, RecordDataset

__all__ = ["ReasoningDataModule", "RecordDataset", "FORMATS"]
