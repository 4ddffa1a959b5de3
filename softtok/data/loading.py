"""Training loaders that resume exactly: a per-epoch seeded order, and skipping the part of an epoch already done."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["EpochShuffleSampler", "ResumableDataLoader", "batches_done"]


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with ``seed + epoch``: the order of every epoch is reproducible, also after resuming.

    Lightning calls :meth:`set_epoch` at the start of each epoch.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose first pass skips its first ``skip`` batches (the part of an epoch already done).

    Args:
        *args: As ``DataLoader``.
        skip: Batches to leave out of the first iteration only (:func:`batches_done`).
        **kwargs: As ``DataLoader``.
    """

    def __init__(self, *args: Any, skip: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0
        return itertools.islice(super().__iter__(), skip, None)


def batches_done(trainer: Any) -> int:
    """The training batches a resumed fit has already completed in its current epoch (0 when not resuming).

    Lightning restores its loop progress from the checkpoint before it asks for the training
    loader, but restarts a plain loader's epoch from its first batch; skipping these makes a
    run resumed from a mid-epoch checkpoint see the batches it would have seen. The count is
    of batches *processed* (their training step ran): a checkpoint written in
    ``on_train_batch_end`` (``ModelCheckpoint(every_n_train_steps=...)``) has not yet marked
    its batch completed.
    """
    if trainer is None or not trainer.fit_loop.restarting:
        return 0
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


class SplitLoaders:
    """The four dataloaders of a LightningDataModule whose splits are encoded lists.

    The class using it provides ``dataset(split)``, ``collate``, ``batch_size``,
    ``eval_batch_size``, ``num_workers``, ``seed``, ``shuffle`` and ``trainer``. Training
    batches are shuffled per epoch (:class:`EpochShuffleSampler`) and skip what a resumed fit
    already did (:func:`batches_done`); evaluation batches keep the split's order.
    """

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        data = self.dataset(split)
        if not len(data):
            raise ValueError(f"the {split!r} split is empty (set its size or file)")
        if not train:
            return DataLoader(data, batch_size=self.eval_batch_size, collate_fn=self.collate,
                              num_workers=self.num_workers)
        sampler = EpochShuffleSampler(len(data), self.seed) if self.shuffle else None
        return ResumableDataLoader(data, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collate,
                                   num_workers=self.num_workers, skip=batches_done(self.trainer))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
