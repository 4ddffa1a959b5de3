"""Instruction/answer pairs for soft-prompt tuning: JSONL files or reasoning-gym tasks, tokenised.

Each example becomes a chat: an optional system message, the instruction as the user
turn, the answer as the assistant turn. The chat template renders the prompt part
(``add_generation_prompt=True``); the answer tokens (plus EOS, so the model learns to
stop) follow, and only they carry labels. A batch holds both views of each example:

* ``input_ids`` / ``attention_mask`` / ``labels``: prompt + answer, right-padded (training loss);
* ``prompt_ids`` / ``prompt_mask``: the prompt alone, left-padded (generation);
* ``answers`` and ``records``: reference strings and the raw records (scoring).

The assistant turn is the reference answer (``target="answer"``) or a worked solution
that ends with ``Final answer: <answer>`` (``target="solution"``: a JSONL field, or
:mod:`softtok.data.solutions` for reasoning-gym tasks). Scoring always compares the
extracted final answer with the reference answer.

reasoning-gym splits come from three seeds, ``seed + k * SPLIT_STRIDE`` for train /
validation / test (``k = 0, 1, 2``). The stride is large on purpose: reasoning-gym draws
problem ``i`` from ``Random(seed + i)``, so neighbouring seeds give the same problems
shifted by one. Validation and test questions that also occur in the training split are
dropped (small task spaces repeat questions), so the held-out splits are really held out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from softtok.answers import check_answer
from softtok.data.loading import SplitLoaders
from softtok.data.solutions import SOLVERS, worked_solution

IGNORE_INDEX = -100
SOURCES = ("reasoning_gym", "jsonl")
TARGETS = ("answer", "solution")
SPLITS = ("train", "val", "test")
#: Seed distance between splits (> any split size, so the problem streams never overlap).
SPLIT_STRIDE = 1_000_003


class ListDataset(Dataset):
    """A list as a map-style dataset."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):  # noqa: ANN204
        return self.items[index]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def load_tokenizer(name_or_path: str | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A tokenizer by softtok model name (``"smollm2-135m"``), folder or hub id, with a pad token."""
    if isinstance(name_or_path, PreTrainedTokenizerBase):
        tokenizer = name_or_path
    else:
        from softtok.models import load_tokenizer as load_model_tokenizer

        tokenizer = load_model_tokenizer(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class InstructDataModule(SplitLoaders, LightningDataModule):
    """Tokenised instruction/answer batches with loss on the answer only.

    Args:
        tokenizer: softtok model name, tokenizer folder or hub id (the same model as the
            LightningModule's), or a tokenizer object.
        source: ``"reasoning_gym"`` or ``"jsonl"``.
        task: reasoning-gym task name (``"chain_sum"``, ``"basic_arithmetic"``...).
        task_config: reasoning-gym options of the task (``{"min_terms": 2, ...}``).
        train_size: Training problems (reasoning-gym).
        val_size: Validation problems (reasoning-gym).
        test_size: Test problems (reasoning-gym).
        seed: Split seed: train ``seed``, validation ``seed + SPLIT_STRIDE``, test
            ``seed + 2 * SPLIT_STRIDE``; also the shuffle seed.
        train_file: JSONL training file (``source="jsonl"``).
        val_file: JSONL validation file (optional).
        test_file: JSONL test file (optional).
        instruction_field: JSONL field holding the instruction.
        answer_field: JSONL field holding the answer.
        target: What the assistant turn is trained to say: ``"answer"`` (the reference
            answer) or ``"solution"`` (a worked solution ending in ``Final answer: <answer>``).
        solution_field: JSONL field holding the worked solution (``target="solution"``).
        system_prompt: System message put before every instruction (``None``: none, so the
            template's default system message, if any, applies).
        answer_prefix: Text put before the answer in the assistant turn (e.g. ``"Final answer: "``).
        max_length: Longest tokenised example; longer prompts are cut from the left (the answer is kept).
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size (default: ``batch_size``).
        num_workers: DataLoader workers.
        shuffle: Shuffle the training split (reproducibly, per epoch).

    Raises:
        ValueError: Unknown source, out-of-range sizes, missing files, unknown task or options.
    """

    def __init__(
        self,
        tokenizer: str = "smollm2-135m",
        source: str = "reasoning_gym",
        task: str = "chain_sum",
        task_config: dict[str, Any] | None = None,
        train_size: int = 1000,
        val_size: int = 64,
        test_size: int = 200,
        seed: int = 0,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        instruction_field: str = "instruction",
        answer_field: str = "answer",
        target: str = "answer",
        solution_field: str = "solution",
        system_prompt: str | None = None,
        answer_prefix: str = "",
        max_length: int = 256,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source={source!r} is not allowed; allowed: {', '.join(SOURCES)}")
        if target not in TARGETS:
            raise ValueError(f"target={target!r} is not allowed; allowed: {', '.join(TARGETS)}")
        for name, value, low in (("train_size", train_size, 1), ("val_size", val_size, 0), ("test_size", test_size, 0),
                                 ("max_length", max_length, 2), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0)):
            _check_int(name, value, low)
        if max(train_size, val_size, test_size) * 2 >= SPLIT_STRIDE:
            raise ValueError(f"split sizes must stay below {SPLIT_STRIDE // 2}")
        if eval_batch_size is not None:
            _check_int("eval_batch_size", eval_batch_size, 1)
        if source == "jsonl":
            if train_file is None and val_file is None and test_file is None:
                raise ValueError("source='jsonl' needs at least one of train_file, val_file, test_file")
            for name, path in (("train_file", train_file), ("val_file", val_file), ("test_file", test_file)):
                if path is not None and not Path(path).is_file():
                    raise ValueError(f"{name}={path!r} does not exist")
        else:
            from softtok.data.reasoning import ReasoningDataModule

            # Validates the task name and options now, before any model work.
            ReasoningDataModule._validate_task(task, dict(task_config or {}), max(train_size, 1), seed)
            if target == "solution" and task not in SOLVERS:
                raise ValueError(f"target='solution' needs worked solutions, and task {task!r} has none; "
                                 f"tasks with solutions: {', '.join(sorted(SOLVERS))} (or use source='jsonl' "
                                 "with a solution_field)")
        self.save_hyperparameters(ignore=["tokenizer"] if not isinstance(tokenizer, str) else None)
        self.tokenizer_source = tokenizer
        self.source, self.task, self.task_config = source, task, dict(task_config or {})
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.seed = seed
        self.instruction_field, self.answer_field = instruction_field, answer_field
        self.target, self.solution_field = target, solution_field
        self.system_prompt, self.answer_prefix = system_prompt, answer_prefix
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._records: dict[str, list[dict[str, Any]]] | None = None
        self._scorers: dict[str, Any] = {}

    # ------------------------------------------------------------------ data
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_source)
        return self._tokenizer

    def _gym_split(self, split: str, exclude: set[str]) -> list[dict[str, Any]]:
        from softtok.data.reasoning import ReasoningDataModule

        size = self.sizes[split]
        if size == 0:
            return []
        offset = SPLITS.index(split)
        # Generate extra problems so that dropping the ones seen in training still leaves `size`.
        extra = size if exclude else 0
        module = ReasoningDataModule(task=self.task, task_config=self.task_config or None, size=size + extra,
                                     seed=self.seed + offset * SPLIT_STRIDE)
        records = [r for r in module.records if r["question"] not in exclude][:size]
        if self.target == "solution":
            records = [{**r, "solution": worked_solution(r)} for r in records]
        self._scorers[split] = module
        return records

    def _jsonl_split(self, split: str) -> list[dict[str, Any]]:
        path = self.files[split]
        if path is None:
            return []
        records = []
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                fields = [self.instruction_field, self.answer_field]
                fields += [self.solution_field] if self.target == "solution" else []
                for field in fields:
                    if field not in obj:
                        raise ValueError(f"{path}, line {line_no}: no field {field!r} (fields: {sorted(obj)})")
                record = {"index": len(records), "question": str(obj[self.instruction_field]),
                          "answer": str(obj[self.answer_field]), "task": Path(path).stem, "metadata": {}}
                if self.target == "solution":
                    record["solution"] = str(obj[self.solution_field])
                records.append(record)
        return records

    @property
    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Raw records of each split (``{"question", "answer", ...}``)."""
        if self._records is None:
            if self.source == "jsonl":
                self._records = {split: self._jsonl_split(split) for split in SPLITS}
            else:
                train = self._gym_split("train", set())
                seen = {r["question"] for r in train}
                self._records = {"train": train, "val": self._gym_split("val", seen),
                                 "test": self._gym_split("test", seen)}
        return self._records

    def setup(self, stage: str | None = None) -> None:
        """Build the splits (idempotent)."""
        _ = self.records, self.tokenizer

    # -------------------------------------------------------------- encoding
    def messages(self, instruction: str) -> list[dict[str, str]]:
        """The chat messages of one instruction."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": instruction}]

    def encode(self, record: dict[str, Any]) -> dict[str, Any]:
        """Token ids of one record's prompt and target (the answer or the solution, ending with EOS)."""
        tok = self.tokenizer
        text = tok.apply_chat_template(self.messages(record["question"]), add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        target = record["solution"] if self.target == "solution" else record["answer"]
        answer = tok(self.answer_prefix + target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(answer) >= self.max_length:
            raise ValueError(f"{self.target} of {len(answer)} tokens does not fit max_length={self.max_length}")
        prompt = prompt[-(self.max_length - len(answer)):]  # cut the prompt's start, never the answer
        return {"prompt": prompt, "answer": answer, "record": record}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad a list of encoded records into a batch (see the module docstring)."""
        pad = self.tokenizer.pad_token_id
        full = [it["prompt"] + it["answer"] for it in items]
        width = max(map(len, full))
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        pwidth = max(len(it["prompt"]) for it in items)
        prompt_ids = torch.full((len(items), pwidth), pad, dtype=torch.long)
        prompt_mask = torch.zeros((len(items), pwidth), dtype=torch.long)
        for i, (it, seq) in enumerate(zip(items, full, strict=True)):
            n, p = len(seq), len(it["prompt"])
            input_ids[i, :n] = torch.tensor(seq)
            attention_mask[i, :n] = 1
            labels[i, p:n] = torch.tensor(it["answer"])
            prompt_ids[i, pwidth - p:] = torch.tensor(it["prompt"])
            prompt_mask[i, pwidth - p:] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
                "answers": [it["record"]["answer"] for it in items],
                "records": [it["record"] for it in items],
                "split": [it.get("split", "") for it in items]}

    def dataset(self, split: str) -> ListDataset:
        """The encoded examples of a split."""
        return ListDataset([{**self.encode(r), "split": split} for r in self.records[split]])

    # --------------------------------------------------------------- scoring
    def score(self, record: dict[str, Any], prediction: str | None, split: str = "") -> bool:
        """Whether an extracted ``prediction`` is right: the reasoning-gym scorer when the record has one."""
        module = self._scorers.get(split)
        if module is not None:
            return module.score(record, prediction)
        return check_answer(prediction, record["answer"])
