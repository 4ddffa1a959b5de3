"""Synthetic long-context question answering, generated in-repo (no downloads), for context compression.

Each record is a made-up population: ``n_people`` people, each with a city, a pet, a job
and an age, written as one sentence per fact, mixed with ``distractors`` neutral sentences,
all in a shuffled order. The question asks for one fact of one person; the answer is one
or two words. A fact sits anywhere in the context, so a model must read all of it: the
full context answers, a truncated context only when the fact survived the cut. Records are
a pure function of ``(seed, index)`` (``random.Random(f"{seed}:{index}")``).

:class:`LongContextQADataModule` renders each record as a chat whose user message is
``"Context:\\n{context}\\n\\nQuestion: {question}"``. The text before the context, the
context and the text after it are tokenised **separately** and concatenated, so the
context's token span is exact and is marked in ``context_mask`` (the segments a compressor
sees are the context's own tokens).

Scoring (:func:`answer_correct`): the generation and the reference are normalised
(lower case, punctuation dropped, whitespace collapsed), and the answer is right when the
reference's words occur as consecutive whole words in the **first sentence** of the
generation ("Paris", "Bob lives in Paris." both count for ``paris``; "Rome, or Paris"
counts too, which a 12-token budget keeps rare). Exact match would punish the chatty but
right answers of a 135M model; the first-sentence window keeps lists of guesses from
scoring by luck further on.
"""

from __future__ import annotations

import random
import re
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from transformers import PreTrainedTokenizerBase

from softtok.data.instruct import IGNORE_INDEX, SPLIT_STRIDE, SPLITS, ListDataset, _check_int, load_tokenizer
from softtok.data.loading import SplitLoaders

#: Placeholder for the context inside the rendered chat (split on it, never tokenised).
_CONTEXT_MARK = "\x00CONTEXT\x00"

NAMES = ("Alice", "Bruno", "Clara", "Daniel", "Elena", "Felix", "Grace", "Hugo", "Irene", "Jonas", "Karen", "Lucas",
         "Maria", "Nathan", "Olivia", "Pablo", "Quinn", "Rosa", "Simon", "Tara", "Victor", "Wendy", "Xavier", "Yara",
         "Zoe", "Omar", "Nina", "Leo", "Mia", "Ivan")
CITIES = ("Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Dublin", "Oslo", "Prague", "Warsaw", "Athens",
          "Cairo", "Tokyo", "Lima", "Toronto", "Chicago", "Sydney", "Boston")
PETS = ("cat", "dog", "parrot", "rabbit", "hamster", "turtle", "goldfish", "horse", "snake", "ferret", "pony",
        "lizard")
JOBS = ("teacher", "doctor", "pilot", "baker", "lawyer", "farmer", "nurse", "painter", "chef", "dentist", "writer",
        "plumber", "singer", "banker", "engineer")
FIELDS = ("city", "pet", "job", "age")
FACT_TEMPLATES = {
    "city": "{name} lives in {value}.",
    "pet": "{name} has a pet {value}.",
    "job": "{name} works as a {value}.",
    "age": "{name} is {value} years old.",
}
QUESTION_TEMPLATES = {
    "city": "In which city does {name} live?",
    "pet": "What pet does {name} have?",
    "job": "What is the job of {name}?",
    "age": "How old is {name}?",
}
DISTRACTORS = (
    "The town square was busy on market day.", "It rained for most of the week.",
    "A new bridge opened near the river.", "The library stayed open late on Fridays.",
    "Several trains were delayed by snow.", "The museum showed old maps and coins.",
    "Fresh bread was sold every morning.", "The park had a small lake with ducks.",
    "A concert took place in the old hall.", "The school held a science fair in spring.",
    "Strong winds closed the harbour for a day.", "The bakery changed its opening hours.",
    "A festival filled the streets with music.", "The hills were green after the storm.",
    "Many tourists visited during the summer.", "The local team won the final match.",
    "An old clock tower stands near the station.", "The market sold apples and pears.",
    "Night buses run every half hour.", "The cafe on the corner serves strong coffee.",
)
SYSTEM_PROMPT = "Answer the question using the context. Reply with the answer only, in one or two words."


def make_record(seed: int, index: int, n_people: int = 3, distractors: int = 16) -> dict[str, Any]:
    """One question: a shuffled context of facts and distractors, a question about one fact, its answer.

    Args:
        seed: Split seed.
        index: Record index (with ``seed``, fixes everything).
        n_people: People in the context, ``1..len(NAMES)``.
        distractors: Neutral sentences mixed in, ``0..len(DISTRACTORS)``.

    Returns:
        ``{"index", "context", "question", "answer", "field", "person", "answer_sentence"}``.
    """
    rng = random.Random(f"{seed}:{index}")
    people = rng.sample(NAMES, n_people)
    facts = []
    for name in people:
        values = {"city": rng.choice(CITIES), "pet": rng.choice(PETS), "job": rng.choice(JOBS),
                  "age": str(rng.randint(21, 89))}
        facts.append((name, values))
    target_name, target_values = rng.choice(facts)
    field = rng.choice(FIELDS)
    sentences = [FACT_TEMPLATES[f].format(name=name, value=values[f]) for name, values in facts for f in FIELDS]
    sentences += rng.sample(DISTRACTORS, distractors)
    rng.shuffle(sentences)
    answer_sentence = FACT_TEMPLATES[field].format(name=target_name, value=target_values[field])
    return {"index": index, "context": " ".join(sentences), "sentences": sentences,
            "question": QUESTION_TEMPLATES[field].format(name=target_name), "answer": target_values[field],
            "field": field, "person": target_name, "answer_sentence": answer_sentence}


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def answer_correct(generation: str, reference: str) -> bool:
    """Whether the normalised reference occurs as whole words in the generation's first sentence."""
    first = re.split(r"(?<=[.!?\n])\s", generation.strip(), maxsplit=1)[0]
    return f" {normalize(reference)} " in f" {normalize(first)} "


class LongContextQADataModule(SplitLoaders, LightningDataModule):
    """Tokenised long-context QA batches with the context span marked.

    A batch holds:

    * ``input_ids`` / ``attention_mask`` / ``labels`` ``[B, T]``: prompt + answer + EOS,
      right-padded, labels on the answer and EOS only (training, distillation);
    * ``context_mask`` ``[B, T]``: the context tokens in that layout;
    * ``prompt_ids`` / ``prompt_mask`` / ``prompt_context_mask`` ``[B, P]``: the prompt
      alone, left-padded, with its context span (generation);
    * ``answers`` and ``records``.

    Args:
        tokenizer: softtok model name, folder or hub id, or a tokenizer object.
        train_size: Training questions (split seed ``seed``).
        val_size: Validation questions (``seed + SPLIT_STRIDE``).
        test_size: Test questions (``seed + 2 * SPLIT_STRIDE``).
        seed: Split seed; also the shuffle seed.
        n_people: People per context (4 facts each).
        distractors: Neutral sentences per context.
        max_context_tokens: Longest context in tokens; longer ones lose sentences other than
            the answer's (last first) until they fit. ``None``: no limit.
        system_prompt: System message (``None``: none, the template's default applies).
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (default ``batch_size``).
        num_workers: DataLoader workers.
        shuffle: Shuffle the training split (reproducibly, per epoch).

    Raises:
        ValueError: Out-of-range sizes or counts.
    """

    def __init__(
        self,
        tokenizer: str | PreTrainedTokenizerBase = "smollm2-135m",
        train_size: int = 2000,
        val_size: int = 32,
        test_size: int = 200,
        seed: int = 0,
        n_people: int = 3,
        distractors: int = 16,
        max_context_tokens: int | None = None,
        system_prompt: str | None = SYSTEM_PROMPT,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        for name, value, low in (("train_size", train_size, 0), ("val_size", val_size, 0),
                                 ("test_size", test_size, 0), ("n_people", n_people, 1),
                                 ("distractors", distractors, 0), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0)):
            _check_int(name, value, low)
        if n_people > len(NAMES):
            raise ValueError(f"n_people={n_people} is more than the {len(NAMES)} names available")
        if distractors > len(DISTRACTORS):
            raise ValueError(f"distractors={distractors} is more than the {len(DISTRACTORS)} sentences available")
        if max(train_size, val_size, test_size) * 2 >= SPLIT_STRIDE:
            raise ValueError(f"split sizes must stay below {SPLIT_STRIDE // 2}")
        if max_context_tokens is not None:
            _check_int("max_context_tokens", max_context_tokens, 16)
        if eval_batch_size is not None:
            _check_int("eval_batch_size", eval_batch_size, 1)
        self.save_hyperparameters(ignore=["tokenizer"] if not isinstance(tokenizer, str) else None)
        self.tokenizer_source = tokenizer
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.seed, self.n_people, self.distractors = seed, n_people, distractors
        self.max_context_tokens = max_context_tokens
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.shuffle = num_workers, shuffle
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._records: dict[str, list[dict[str, Any]]] | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_source)
        return self._tokenizer

    @property
    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Raw records of each split."""
        if self._records is None:
            self._records = {
                split: [make_record(self.seed + k * SPLIT_STRIDE, i, self.n_people, self.distractors)
                        for i in range(self.sizes[split])]
                for k, split in enumerate(SPLITS)
            }
        return self._records

    def setup(self, stage: str | None = None) -> None:
        """Build the splits (idempotent)."""
        _ = self.records, self.tokenizer

    # -------------------------------------------------------------- encoding
    def _prompt_parts(self, question: str) -> tuple[list[int], list[int]]:
        """Token ids of the chat before and after the context."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs.append({"role": "user", "content": f"Context:\n{_CONTEXT_MARK}\n\nQuestion: {question}"})
        text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        before, after = text.split(_CONTEXT_MARK)
        tok = self.tokenizer
        return tok(before, add_special_tokens=False)["input_ids"], tok(after, add_special_tokens=False)["input_ids"]

    def context_ids(self, record: dict[str, Any]) -> list[int]:
        """The context's token ids, trimmed to ``max_context_tokens`` (keeping the answer's sentence)."""
        tok = self.tokenizer
        sentences = list(record["sentences"])
        ids = tok(" ".join(sentences), add_special_tokens=False)["input_ids"]
        limit = self.max_context_tokens
        while limit is not None and len(ids) > limit:
            drop = next((j for j in range(len(sentences) - 1, -1, -1)
                         if sentences[j] != record["answer_sentence"]), None)
            if drop is None:
                raise ValueError(f"max_context_tokens={limit} cannot hold even the answer's sentence")
            del sentences[drop]
            ids = tok(" ".join(sentences), add_special_tokens=False)["input_ids"]
        return ids

    def encode(self, record: dict[str, Any]) -> dict[str, Any]:
        """Token ids of one record: before-context, context, after-context, answer (+ EOS)."""
        before, after = self._prompt_parts(record["question"])
        context = self.context_ids(record)
        answer = self.tokenizer(record["answer"], add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return {"prompt": before + context + after, "span": (len(before), len(before) + len(context)),
                "answer": answer, "record": record}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad encoded records into a batch (see the class docstring)."""
        pad = self.tokenizer.pad_token_id
        n = len(items)
        width = max(len(it["prompt"]) + len(it["answer"]) for it in items)
        pwidth = max(len(it["prompt"]) for it in items)
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        context_mask = torch.zeros((n, width), dtype=torch.long)
        prompt_ids = torch.full((n, pwidth), pad, dtype=torch.long)
        prompt_mask = torch.zeros((n, pwidth), dtype=torch.long)
        prompt_context_mask = torch.zeros((n, pwidth), dtype=torch.long)
        for i, it in enumerate(items):
            p, (start, end) = len(it["prompt"]), it["span"]
            seq = it["prompt"] + it["answer"]
            input_ids[i, :len(seq)] = torch.tensor(seq)
            attention_mask[i, :len(seq)] = 1
            labels[i, p:len(seq)] = torch.tensor(it["answer"])
            context_mask[i, start:end] = 1
            lead = pwidth - p
            prompt_ids[i, lead:] = torch.tensor(it["prompt"])
            prompt_mask[i, lead:] = 1
            prompt_context_mask[i, lead + start:lead + end] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "context_mask": context_mask, "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
                "prompt_context_mask": prompt_context_mask,
                "answers": [it["record"]["answer"] for it in items], "records": [it["record"] for it in items]}

    def dataset(self, split: str) -> ListDataset:
        """The encoded examples of a split."""
        return ListDataset([self.encode(r) for r in self.records[split]])

    def score(self, record: dict[str, Any], generation: str) -> bool:
        """:func:`answer_correct` of a generation against the record's answer."""
        return answer_correct(generation, record["answer"])
