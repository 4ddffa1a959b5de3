"""Reasoning problems as a LightningDataModule: reasoning-gym tasks or JSONL files.

The module yields raw records, not tokens: the LightningModule applies the chat
template. A record is a dict::

    {"index": 3,            # problem index (position in the task / file)
     "sample": 0,           # sample index within the problem, 0 .. n_samples - 1
     "question": "...",     # the problem text
     "answer": "42",        # the reference answer
     "task": "chain_sum",   # reasoning-gym task name, or the JSONL file's stem
     "metadata": {...}}     # JSON-serialisable extras (reasoning-gym metadata, other JSONL fields)

Dataloaders yield lists of records (``collate_fn=list``). The predict / test / val
loaders are unshuffled and keep input order: each problem's ``n_samples`` copies are
adjacent. :meth:`ReasoningDataModule.score` checks a prediction with the
reasoning-gym task's own scorer when the record comes from one, else with
:func:`softtok.answers.check_answer` (math-verify).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from softtok.answers import check_answer
from softtok.data.loading import EpochShuffleSampler, ResumableDataLoader, batches_done

__all__ = ["FORMATS", "ReasoningDataModule", "RecordDataset"]

#: JSONL layouts understood by :class:`ReasoningDataModule`.
FORMATS: tuple[str, ...] = ("auto", "plain", "gsm8k", "math500")


class RecordDataset(Dataset):
    """A list of records as a map-style dataset."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):  # arrays
        return obj.tolist()
    return repr(obj)


def json_safe(obj: Any) -> Any:
    """A JSON round-tripped copy of ``obj`` (tuples become lists, odd objects their ``repr``)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _gsm8k_reference(solution: str) -> str | None:
    """The final answer of a GSM8K-style solution: the text after the last ``####``, commas dropped."""
    if "####" not in solution:
        return None
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}{extra}")


def _check_holdout(holdout: int, problems: int, validation: int = 0) -> None:
    if holdout + validation >= problems:
        what = f"holdout={holdout}" + (f" + validation={validation}" if validation else "")
        raise ValueError(f"{what} must leave training problems: it must be < the number of problems ({problems})")


class ReasoningDataModule(LightningDataModule):
    """Reasoning problems from a reasoning-gym task or a JSONL file, as raw records.

    Args:
        task: reasoning-gym dataset name (see ``reasoning_gym.factory.DATASETS``), e.g.
            ``"chain_sum"``, ``"basic_arithmetic"``, ``"gsm_symbolic"``. Ignored when
            ``path`` is given.
        path: JSONL file of problems, one JSON object a line (blank lines skipped). When
            set, problems come from this file instead of reasoning-gym.
        format: JSONL layout. ``"plain"``: ``question_field`` / ``answer_field`` as they
            are. ``"gsm8k"``: the answer field is a chain of thought ending in
            ``#### N``; the reference is ``N`` (commas dropped) and the full solution goes
            to ``metadata["solution"]``. ``"math500"``: fields ``problem`` / ``answer``
            (MATH-500); other fields go to metadata. ``"auto"`` (default), per line: the
            question from ``question_field``, else ``problem``; the reference from
            ``answer_field``, cut after the last ``####`` when it has one.
        question_field: JSONL field holding the question (``"plain"``, ``"gsm8k"``, ``"auto"``).
        answer_field: JSONL field holding the reference answer.
        task_config: Extra keyword arguments for ``reasoning_gym.create_dataset`` (e.g.
            ``{"min_terms": 2, "max_terms": 3}``); not allowed with ``path``.
        size: Number of reasoning-gym problems to generate, ``>= 1``.
        seed: reasoning-gym generation seed; also seeds the shuffling of the train loader.
        n_samples: Copies of each problem (for pass@k), ``>= 1``; ``record["sample"]``
            numbers them.
        batch_size: Records per batch, ``>= 1``.
        limit: Keep only the first ``limit`` problems (``None``: all).
        holdout: The last ``holdout`` problems are the evaluation split (the test and predict
            loaders, and val unless ``validation`` is set); the others are the training split,
            less every problem whose question is held out. 0 (default): every loader has every problem.
        validation: The ``validation`` problems before the last ``holdout`` are a separate
            validation split (the val loader: choose settings on it, not on the test split);
            training leaves out their questions too. 0: validation uses the ``holdout`` split.
        num_workers: DataLoader worker processes.

    Raises:
        ValueError: For an unknown task, bad ``task_config`` keys or values, a value out
            of range, or an unknown ``format``.
        FileNotFoundError: If ``path`` does not exist.
    """

    def __init__(
        self,
        task: str = "chain_sum",
        path: str | None = None,
        format: str = "auto",  # noqa: A002 - the natural name for a config key
        question_field: str = "question",
        answer_field: str = "answer",
        task_config: dict[str, Any] | None = None,
        size: int = 200,
        seed: int = 7,
        n_samples: int = 1,
        batch_size: int = 8,
        limit: int | None = None,
        holdout: int = 0,
        num_workers: int = 0,
        validation: int = 0,
    ) -> None:
        super().__init__()
        _check_int("size", size, 1)
        _check_int("n_samples", n_samples, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("limit", limit, 1, allow_none=True)
        _check_int("num_workers", num_workers, 0)
        _check_int("holdout", holdout, 0)
        _check_int("validation", validation, 0)
        if validation and not holdout:
            raise ValueError(f"validation={validation} needs a test split: set holdout > 0 (the last problems)")
        if path is None:  # a JSONL file's problems are counted when it is read
            _check_holdout(holdout, min(size, limit or size), validation)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r} must be an integer")
        if format not in FORMATS:
            raise ValueError(f"format={format!r} is not one of {list(FORMATS)}")
        task_config = dict(task_config or {})
        if path is not None:
            if task_config:
                raise ValueError(
                    f"task_config={task_config!r} applies to reasoning-gym tasks only, not to path={path!r}"
                )
            if not Path(path).is_file():
                raise FileNotFoundError(f"JSONL file not found: {path!r}")
        else:
            self._validate_task(task, task_config, size, seed)
        self.save_hyperparameters()
        self.task = Path(path).stem if path is not None else task
        self.path = path
        self.format = format
        self.question_field = question_field
        self.answer_field = answer_field
        self.task_config = task_config
        self.size = size
        self.seed = seed
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.limit = limit
        self.holdout = holdout
        self.validation = validation
        self.num_workers = num_workers
        self._gym_dataset: Any = None
        self._entries: list[dict[str, Any]] | None = None
        self._records: list[dict[str, Any]] | None = None

    # ----------------------------------------------------------------- validation
    @staticmethod
    def _validate_task(task: str, task_config: dict[str, Any], size: int, seed: int) -> None:
        """Check the task name and its config against the reasoning-gym registry, without generating anything."""
        from reasoning_gym.factory import DATASETS

        if task not in DATASETS:
            close = difflib.get_close_matches(str(task), list(DATASETS), n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(
                f"unknown reasoning-gym task {task!r}.{hint} Valid names are the keys of "
                f"reasoning_gym.factory.DATASETS ({len(DATASETS)} tasks, e.g. 'chain_sum', 'basic_arithmetic', "
                "'gsm_symbolic'); list them with: python -c \"import reasoning_gym.factory as f; "
                'print(sorted(f.DATASETS))"'
            )
        _, config_cls = DATASETS[task]
        reserved = {"size", "seed"} & set(task_config)
        if reserved:
            raise ValueError(f"task_config must not set {sorted(reserved)}: use the datamodule's own size / seed")
        if dataclasses.is_dataclass(config_cls):
            allowed = sorted(f.name for f in dataclasses.fields(config_cls) if f.name not in ("size", "seed"))
            unknown = sorted(set(task_config) - set(allowed))
            if unknown:
                raise ValueError(f"task_config keys {unknown} are not options of task {task!r}; allowed: {allowed}")
        try:
            config = config_cls(size=size, seed=seed, **task_config)
            if hasattr(config, "validate"):
                config.validate()
        except (AssertionError, TypeError, ValueError) as err:
            raise ValueError(f"invalid task_config {task_config!r} for task {task!r}: {err}") from err

    # ------------------------------------------------------------------- loading
    def _load_gym(self) -> list[dict[str, Any]]:
        import reasoning_gym

        self._gym_dataset = reasoning_gym.create_dataset(self.task, size=self.size, seed=self.seed, **self.task_config)
        count = self.size if self.limit is None else min(self.size, self.limit)
        self._entries = [self._gym_dataset[i] for i in range(count)]
        return [
            {
                "index": i,
                "question": str(entry["question"]),
                "answer": str(entry["answer"]),
                "task": self.task,
                "metadata": json_safe(entry.get("metadata", {})),
            }
            for i, entry in enumerate(self._entries)
        ]

    def _parse_line(self, obj: Any, where: str) -> tuple[str, str, dict[str, Any]]:
        """(question, reference, metadata) of one JSONL object, per ``self.format``."""
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        fmt = self.format
        if fmt == "math500":
            q_key, a_key = "problem", "answer"
        elif fmt == "auto" and self.question_field not in obj and "problem" in obj:
            q_key, a_key = "problem", self.answer_field
        else:
            q_key, a_key = self.question_field, self.answer_field
        if q_key not in obj:
            raise ValueError(f"{where}: no question field {q_key!r} (fields: {sorted(obj)}; format={fmt!r})")
        if a_key not in obj:
            raise ValueError(f"{where}: no answer field {a_key!r} (fields: {sorted(obj)}; format={fmt!r})")
        question, answer = obj[q_key], obj[a_key]
        if not isinstance(question, str):
            raise ValueError(f"{where}: question field {q_key!r} must be a string, got {type(question).__name__}")
        answer = answer if isinstance(answer, str) else json.dumps(answer)
        metadata = {k: v for k, v in obj.items() if k not in (q_key, a_key)}
        if fmt in ("gsm8k", "auto") and "####" in answer:
            metadata["solution"] = answer
            answer = _gsm8k_reference(answer)
        elif fmt == "gsm8k":
            raise ValueError(f"{where}: format 'gsm8k' needs an answer ending in '#### <answer>', got {answer[-80:]!r}")
        return question, answer, json_safe(metadata)

    def _load_jsonl(self) -> list[dict[str, Any]]:
        problems = []
        path = Path(self.path)
        with path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if self.limit is not None and len(problems) >= self.limit:
                    break
                if not line.strip():
                    continue
                where = f"{path}, line {line_no}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
                question, answer, metadata = self._parse_line(obj, where)
                problems.append(
                    {
                        "index": len(problems),
                        "question": question,
                        "answer": answer,
                        "task": self.task,
                        "metadata": metadata,
                    }
                )
        if not problems:
            raise ValueError(f"{path}: no problems (the file is empty or has only blank lines)")
        return problems

    def _ensure_loaded(self) -> list[dict[str, Any]]:
        if self._records is None:
            problems = self._load_jsonl() if self.path is not None else self._load_gym()
            _check_holdout(self.holdout, len(problems), self.validation)
            self._records = [{**p, "sample": s} for p in problems for s in range(self.n_samples)]
        return self._records

    @property
    def train_records(self) -> list[dict[str, Any]]:
        """The training split: each problem once (``sample`` 0), without the held-out problems or their questions.

        Small task spaces repeat questions (200 distinct two-term single-digit sums), so a
        problem whose question also occurs in the validation or test split is left out too.
        """
        records = [r for r in self.records if r["sample"] == 0]
        cut = len(records) - self.holdout - self.validation
        held_out = {r["question"] for r in records[cut:]} if cut < len(records) else set()
        return [r for r in records[:cut] if r["question"] not in held_out]

    @property
    def eval_records(self) -> list[dict[str, Any]]:
        """The evaluation split: the last ``holdout`` problems (all of them when 0), ``n_samples`` each."""
        return self.records[-self.holdout * self.n_samples:] if self.holdout else self.records

    @property
    def val_records(self) -> list[dict[str, Any]]:
        """The validation split: the ``validation`` problems before the evaluation split, else the evaluation split."""
        if not self.validation:
            return self.eval_records
        end = len(self.records) - self.holdout * self.n_samples
        return self.records[end - self.validation * self.n_samples:end]

    def setup(self, stage: str | None = None) -> None:
        """Generate (reasoning-gym) or read (JSONL) the problems; idempotent."""
        self._ensure_loaded()

    @property
    def records(self) -> list[dict[str, Any]]:
        """All records (``num_problems * n_samples``), problem-major; loads on first access."""
        return self._ensure_loaded()

    @property
    def num_problems(self) -> int:
        """Number of distinct problems."""
        return len(self.records) // self.n_samples

    def record_settings(self) -> dict[str, Any]:
        """The settings that determine the records (for :class:`~softtok.callbacks.JsonlPredictionWriter`).

        ``batch_size`` and ``num_workers`` are left out, and ``holdout`` when 0 (it selects which
        records are predicted); a JSONL file is identified by its name (the records' ``task``
        is its stem) and a SHA-256 of its content, not by its folder.
        """
        common = {"n_samples": self.n_samples, "limit": self.limit}
        if self.holdout:
            common["holdout"] = self.holdout
        if self.path is None:
            return {"task": self.task, "task_config": json_safe(self.task_config), "size": self.size,
                    "seed": self.seed, **common}
        digest = hashlib.sha256(Path(self.path).read_bytes()).hexdigest()
        return {"file": Path(self.path).name, "file_sha256": digest, "format": self.format,
                "question_field": self.question_field, "answer_field": self.answer_field, **common}

    # --------------------------------------------------------------- dataloaders
    def _loader(self, records: list[dict[str, Any]] | None = None) -> DataLoader:
        records = self.eval_records if records is None else records
        return DataLoader(RecordDataset(records), batch_size=self.batch_size, shuffle=False, collate_fn=list,
                          num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        """Unshuffled batches (lists) of the evaluation records, in input order."""
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        """Same as :meth:`predict_dataloader`."""
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        """Unshuffled batches of :attr:`val_records` (the evaluation records unless ``validation`` is set)."""
        return self._loader(self.val_records)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of the training records (e.g. prompts for RL), resumable mid-epoch.

        Each epoch's order depends only on ``seed`` and the epoch. When a fit resumes from a
        checkpoint saved mid-epoch, the batches that epoch had already completed are skipped,
        so the run continues with the very batch it would have seen next.
        """
        records = self.train_records
        return ResumableDataLoader(RecordDataset(records), batch_size=self.batch_size,
                                   sampler=EpochShuffleSampler(len(records), self.seed), collate_fn=list,
                                   num_workers=self.num_workers, skip=batches_done(self.trainer))

    # ------------------------------------------------------------------- scoring
    def scorer_for(self, record: dict[str, Any]) -> Callable[[str], float] | None:
        """The reasoning-gym scorer ``answer -> float`` for a record of this module's task, else ``None``.

        Raises:
            ValueError: If the record claims this task but its index or question does not
                match the generated problem (a record from another configuration).
        """
        if self.path is not None or record.get("task") != self.task:
            return None
        self._ensure_loaded()
        index = record.get("index")
        if not isinstance(index, int) or not 0 <= index < len(self._entries):
            raise ValueError(f"record index {index!r} is outside this task's problems [0, {len(self._entries)})")
        entry = self._entries[index]
        if record.get("question") is not None and record["question"] != entry["question"]:
            raise ValueError(
                f"record {index} of task {self.task!r} does not match the generated problem (different "
                "size/seed/task_config?)"
            )
        return functools.partial(self._gym_dataset.score_answer, entry=entry)

    def score(self, record: dict[str, Any], prediction: str | None) -> bool:
        """Whether ``prediction`` (an extracted answer, see :func:`softtok.answers.extract_answer`) is correct.

        Uses the reasoning-gym task's ``score_answer`` (correct iff the score is ``1.0``)
        for reasoning-gym records, else :func:`softtok.answers.check_answer` against
        ``record["answer"]`` (math-verify).
        """
        return check_answer(prediction, record["answer"], scorer=self.scorer_for(record))
