"""Callbacks: ``JsonlPredictionWriter`` (predictions to JSONL) and ``SavePretrained`` (the trained model, HF format).

``JsonlPredictionWriter``: predictions to one JSONL file, crash-safe, resumable, DDP-merged.

Files next to ``<output>``:

* ``<output>.settings.json``: the settings that determine the records (model, dtype,
  system prompt, generation config, data task / config / size / seed / n_samples / file,
  global seed; not ``batch_size``), written atomically when a run starts and kept with
  the output;
* ``<output>.rank<N>.partial``: each rank's journal. Finished records are appended, one
  complete line per record, flushed and fsynced after every batch;
* ``<output>``: written when the epoch ends. Rank 0 merges all journals (and an output
  being resumed), drops duplicates (``DistributedSampler`` padding), sorts by
  ``(index, sample)`` and writes through ``<output>.tmp`` and ``os.replace``, so the
  output is never half-written; only then are the journals deleted.

What a run does with earlier work (an output, or a journal with content) is decided in
``setup``, before the model loads or generates, and never destroys it by default (files
change only when predicting starts, after every other check has passed):

* ``resume=True``: continue it (skip every ``(index, sample)`` already done; a finished
  output is left as it is) **only if** the recorded settings equal this run's; otherwise
  refuse, naming the settings that changed;
* ``overwrite=True``: discard it and start afresh (this wins over ``resume``);
* neither: refuse, naming both flags.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities import rank_zero_info

from softtok.data.reasoning import json_safe
from softtok.models import save_pretrained_atomic

#: Version of the ``<output>.settings.json`` layout.
SETTINGS_FORMAT = 1
#: Constructor arguments that do not change the records (left out of the fallback settings).
_RUN_ONLY = ("batch_size", "num_workers")


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


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``<path>.tmp``, fsync and ``os.replace``: never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _settings_of(obj: Any) -> dict[str, Any] | None:
    """``obj.record_settings()`` when it has one, else its ``hparams`` without batch size / workers."""
    if obj is None:
        return None
    if callable(getattr(obj, "record_settings", None)):
        settings = obj.record_settings()
    else:
        settings = {k: v for k, v in dict(getattr(obj, "hparams", None) or {}).items() if k not in _RUN_ONLY}
    return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", **settings}


def run_settings(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
    """The settings that determine a prediction run's records, JSON-ready.

    The LightningModule's and the datamodule's ``record_settings()`` (or, for classes
    without one, their ``hparams`` less ``batch_size`` / ``num_workers``), and the global
    seed of ``seed_everything``.
    """
    return json_safe({
        "seed_everything": os.environ.get("PL_GLOBAL_SEED"),
        "model": _settings_of(pl_module),
        "data": _settings_of(getattr(trainer, "datamodule", None)),
    })


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def settings_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every (dotted) setting that differs; empty when they are equal."""
    old, new = _flatten(recorded), _flatten(current)

    def show(key: str, values: dict[str, Any]) -> str:
        if key not in values:
            return "(absent)"
        text = json.dumps(values[key], ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + "..."

    return [f"{key}: {show(key, old)} -> {show(key, new)}"
            for key in sorted(set(old) | set(new)) if old.get(key, ()) != new.get(key, ())]


def _check_output_path(output_path: str) -> Path:
    """The output path, if it can be written: not a directory, under a writable directory."""
    path = Path(output_path)
    if not output_path or path.is_dir():
        raise ValueError(f"output_path={output_path!r} is a directory; give a .jsonl file path")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ValueError(f"output_path={output_path!r} lies under {str(ancestor)!r}, which is a file, not a "
                         "directory; give a path in a directory")
    if ancestor.is_dir() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"output_path={output_path!r}: the directory {str(ancestor)!r} is not writable; "
                         "give a path in a writable directory")
    return path


class JsonlPredictionWriter(BasePredictionWriter):
    """Write ``predict_step`` outputs (lists of dicts) to a JSONL file in input order.

    Earlier work at ``output_path`` (the output, or journals of a crashed run) is never
    destroyed by default: ``resume`` continues it when the settings match, ``overwrite``
    discards it, and with neither the run refuses to start. The check runs in ``setup``,
    before the model loads or generates; a finished output with the same settings is
    resumed by generating nothing.

    Args:
        output_path: The JSONL file to write.
        resume: Continue the earlier run at ``output_path``: skip the ``(index, sample)``
            pairs already in its journals or output. Only if the settings recorded in
            ``<output>.settings.json`` equal this run's (see :func:`run_settings`).
        overwrite: Discard the earlier run at ``output_path`` (output, journals, settings)
            and start afresh; wins over ``resume``.

    Raises:
        ValueError: At construction, if ``output_path`` is a directory or lies under a
            file or an unwritable directory. In ``setup`` (predict), if earlier work exists
            and neither flag is set, or ``resume`` finds other settings (or none recorded).
    """

    def __init__(self, output_path: str, resume: bool = False, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_path = _check_output_path(output_path)
        self.resume = resume
        self.overwrite = overwrite
        self._settings: dict[str, Any] | None = None
        self._resuming = False
        self._file = None

    # ------------------------------------------------------------------- files
    @property
    def settings_path(self) -> Path:
        """``<output>.settings.json``: the settings of the run that writes ``output_path``."""
        return self.output_path.with_name(self.output_path.name + ".settings.json")

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

    def _earlier_work(self) -> list[Path]:
        """The output if it exists and every journal with content (an empty one holds no record)."""
        work = [self.output_path] if self.output_path.exists() else []
        return work + [journal for journal in self._journals() if journal.stat().st_size > 0]

    def _recorded_settings(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.settings_path.read_text(encoding="utf-8"))
            return data["settings"] if data.get("format") == SETTINGS_FORMAT else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    # ------------------------------------------------------------------- plan
    def check_earlier_work(self, settings: dict[str, Any]) -> bool:
        """Decide what to do with earlier work at ``output_path``; nothing is changed on disk.

        Returns:
            ``True`` to resume it, ``False`` to start afresh (nothing there, or ``overwrite``).

        Raises:
            ValueError: If earlier work exists and neither flag is set, or ``resume`` finds
                other settings (or none recorded).
        """
        work = self._earlier_work()
        if not work or self.overwrite:
            return False
        where = f"output_path={str(self.output_path)!r}"
        found = ", ".join(p.name for p in work)
        if not self.resume:
            raise ValueError(
                f"{where} already holds predictions ({found}); set resume=true to continue them (same settings "
                "only) or overwrite=true to discard them, or choose another output_path"
            )
        recorded = self._recorded_settings()
        if recorded is None:
            raise ValueError(
                f"{where} holds predictions ({found}) but no readable settings record {self.settings_path.name}, "
                "so resume=true cannot check they were made with this run's settings; set overwrite=true to "
                "discard them, or choose another output_path"
            )
        changes = settings_changes(recorded, settings)
        if changes:
            raise ValueError(
                f"{where} holds predictions ({found}) made with other settings than this run's: "
                f"{'; '.join(changes)}. resume=true continues only a run with the same settings: rerun with "
                "those, set overwrite=true to discard the earlier predictions, or choose another output_path"
            )
        return True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """For ``predict``: decide what to do with earlier work, on every rank; refuse before the model loads.

        Nothing changes on disk yet: that waits for ``on_predict_start``, once every other
        check has passed, so a run that stops at one of them discards nothing.
        """
        if stage == "predict":
            self._settings = run_settings(trainer, pl_module)
            self._resuming = self.check_earlier_work(self._settings)

    # ------------------------------------------------------------------ writing
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._settings is None:  # setup ran for another stage only
            self.setup(trainer, pl_module, "predict")
        trainer.strategy.barrier("JsonlPredictionWriter.decided")  # every rank decided before rank 0 changes files
        if trainer.is_global_zero:
            self.output_path.parent.mkdir(parents=True, exist_ok=True)
            if self._resuming:
                for journal in self._journals():
                    drop_partial_line(journal)
            else:  # nothing worth keeping there, or overwrite=true
                tmp = self.output_path.with_name(self.output_path.name + ".tmp")
                for path in (self.output_path, tmp, *self._journals()):
                    path.unlink(missing_ok=True)
                record = {"format": SETTINGS_FORMAT, "settings": self._settings}
                write_atomic(self.settings_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        trainer.strategy.barrier("JsonlPredictionWriter.prepared")
        pl_module.skip = {(r["index"], r.get("sample", 0)) for r in self._done()} if self._resuming else set()
        if self._resuming:
            rank_zero_info(f"{self.output_path}: resuming, {len(pl_module.skip)} records already done are skipped")
        self._file = open(self._journal(trainer.global_rank), "a", encoding="utf-8")  # noqa: SIM115

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        for record in prediction or []:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Close the journal (every finished batch is already on disk); the next run can resume it."""
        self._close()

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()
        self._settings = None  # a later predict call decides afresh
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            merged = {(r["index"], r.get("sample", 0)): r for r in self._done()}
            write_atomic(self.output_path,
                         "".join(json.dumps(merged[key], ensure_ascii=False) + "\n" for key in sorted(merged)))
            for journal in self._journals():
                journal.unlink()
        trainer.strategy.barrier()


class SavePretrained(Callback):
    """At the end of ``fit``, save the module's model and tokenizer in Hugging Face format.

    The model is the module's ``lm`` (a peft LoRA model is merged into a copy first), so
    the folder loads with ``from_pretrained`` and every softtok recipe (``model: <folder>``).
    Written atomically by :func:`softtok.models.save_pretrained_atomic`, by rank 0.

    Args:
        path: The folder, or a name of :data:`softtok.models.TRAINED_IN_REPO`
            (``tiny-reasoner``: under ``$SOFTTOK_CACHE``); ``None``: ``<log_dir>/model``
            beside the run's logs and checkpoints.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        lm = pl_module.lm
        if hasattr(lm, "merge_and_unload"):  # peft: the base weights with the adapters folded in
            lm = copy.deepcopy(lm).merge_and_unload()
        path = self.path if self.path is not None else os.path.join(trainer.log_dir or trainer.default_root_dir,
                                                                    "model")
        folder = save_pretrained_atomic(lm, pl_module.tokenizer, path)
        rank_zero_info(f"saved the trained model to {folder}")
