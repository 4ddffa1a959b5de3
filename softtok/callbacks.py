"""``JsonlPredictionWriter``: predictions to one JSONL file, crash-safe, resumable, DDP-merged.

Each rank appends finished records to its own journal (``<output>.rank<N>.partial``),
one complete line per record, flushed after every batch. When the epoch ends, rank 0
merges all journals, drops duplicates (``DistributedSampler`` padding), sorts by
``(index, sample)`` and writes the output through a temporary file and ``os.replace``:
the output file is never half-written. A rerun with ``resume: true`` reads the journals
(and an existing output) and skips the problems already done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a truncated last line (a crash mid-write) is ignored."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if line.endswith("\n"):  # a damaged line in the middle is an error, not a crash artefact
                    raise ValueError(f"{path}: line {len(records) + 1} is not valid JSON") from None
    return records


def drop_partial_line(path: Path) -> None:
    """Cut a crash-truncated last line off a journal, so appending continues on a clean line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class JsonlPredictionWriter(BasePredictionWriter):
    """Write ``predict_step`` outputs (lists of dicts) to a JSONL file in input order.

    Args:
        output_path: The JSONL file to write.
        resume: Skip (index, sample) pairs already in the journals or the output file.
        overwrite: Replace an existing output file; without it (and without ``resume``) an
            existing output is an error, so no finished run is lost.

    Raises:
        ValueError: If ``output_path`` is a directory, or exists and neither ``resume`` nor
            ``overwrite`` is set.
    """

    def __init__(self, output_path: str, resume: bool = False, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path)
        if self.output_path.is_dir():
            raise ValueError(f"output_path={output_path!r} is a directory; give a .jsonl file path")
        if self.output_path.exists() and not (resume or overwrite):
            raise ValueError(
                f"output_path={output_path!r} exists; set resume=true to continue it or overwrite=true to replace it"
            )
        self.resume = resume

    def _journal(self, rank: int) -> Path:
        return self.output_path.with_name(f"{self.output_path.name}.rank{rank}.partial")

    def _journals(self) -> list[Path]:
        return sorted(self.output_path.parent.glob(f"{self.output_path.name}.rank*.partial"))

    def _done(self) -> list[dict[str, Any]]:
        records = []
        if self.output_path.exists():
            records += read_jsonl(self.output_path)
        for journal in self._journals():
            records += read_jsonl(journal)
        return records

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume:
            if trainer.is_global_zero:
                for journal in self._journals():
                    drop_partial_line(journal)
            trainer.strategy.barrier()
            pl_module.skip = {(r["index"], r.get("sample", 0)) for r in self._done()}
        elif trainer.is_global_zero:
            for journal in self._journals():  # stale journals of an earlier, unrelated run
                journal.unlink()
        trainer.strategy.barrier()
        self._file = open(self._journal(trainer.global_rank), "a", encoding="utf-8")  # noqa: SIM115

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        for record in prediction or []:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._file.close()
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            merged = {(r["index"], r.get("sample", 0)): r for r in self._done()}
            tmp = self.output_path.with_name(self.output_path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for key in sorted(merged):
                    f.write(json.dumps(merged[key], ensure_ascii=False) + "\n")
            os.replace(tmp, self.output_path)
            for journal in self._journals():
                journal.unlink()
        trainer.strategy.barrier()
