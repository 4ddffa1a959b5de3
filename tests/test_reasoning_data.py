import json

import pytest

from softtok.data import ReasoningDataModule

KEYS = {"index", "sample", "question", "answer", "task", "metadata"}


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def gsm8k_file(tmp_path):
    rows = [
        {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"question": "A town has 1,000 people and 234 more arrive.", "answer": "1000 + 234 = 1234\n#### 1,234"},
    ]
    return _write_jsonl(tmp_path / "gsm8k_test.jsonl", rows[:1] + [""] + rows[1:])  # a blank line is skipped


@pytest.fixture
def math500_file(tmp_path):
    rows = [
        {
            "problem": "What is $1/2$ as a fraction?",
            "solution": "It is $\\boxed{\\frac{1}{2}}$.",
            "answer": "\\frac{1}{2}",
            "subject": "Prealgebra",
            "level": 1,
            "unique_id": "test/prealgebra/1.json",
        },
        {"problem": "Compute $2+3$.", "solution": "5", "answer": "5", "subject": "Algebra", "level": 1},
    ]
    return _write_jsonl(tmp_path / "math500.jsonl", rows)


@pytest.mark.parametrize("fmt", ["auto", "gsm8k"])
def test_gsm8k_jsonl(gsm8k_file, fmt):
    dm = ReasoningDataModule(path=gsm8k_file, format=fmt, batch_size=8)
    dm.setup("predict")
    records = dm.records
    assert [r["answer"] for r in records] == ["7", "1234"]
    assert [r["index"] for r in records] == [0, 1]
    assert all(set(r) == KEYS and r["task"] == "gsm8k_test" and r["sample"] == 0 for r in records)
    assert records[0]["metadata"]["solution"].endswith("#### 7")
    assert dm.score(records[1], "1,234") and dm.score(records[1], "1234.0")
    assert not dm.score(records[0], "8") and not dm.score(records[0], None)
    assert dm.scorer_for(records[0]) is None


@pytest.mark.parametrize("fmt", ["auto", "math500"])
def test_math500_jsonl(math500_file, fmt):
    dm = ReasoningDataModule(path=math500_file, format=fmt, limit=1)
    records = dm.records
    assert len(records) == 1
    assert records[0]["question"] == "What is $1/2$ as a fraction?"
    assert records[0]["answer"] == "\\frac{1}{2}"
    assert records[0]["metadata"] == {
        "solution": "It is $\\boxed{\\frac{1}{2}}$.",
        "subject": "Prealgebra",
        "level": 1,
        "unique_id": "test/prealgebra/1.json",
    }
    assert dm.score(records[0], "0.5") and dm.score(records[0], "1/2")
    assert not dm.score(records[0], "2")


def test_plain_jsonl_custom_fields(tmp_path):
    path = _write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "2+2?", "target": 4, "id": 9}])
    dm = ReasoningDataModule(path=path, format="plain", question_field="prompt", answer_field="target")
    (record,) = dm.records
    assert record["question"] == "2+2?" and record["answer"] == "4" and record["metadata"] == {"id": 9}


@pytest.mark.parametrize("task", ["chain_sum", "basic_arithmetic"])
def test_reasoning_gym_tasks(task):
    dm = ReasoningDataModule(task=task, size=5, seed=3)
    dm.setup("predict")
    records = dm.records
    assert len(records) == 5 and dm.num_problems == 5
    assert [r["index"] for r in records] == list(range(5))
    for r in records:
        assert set(r) == KEYS and r["task"] == task
        assert isinstance(r["question"], str) and isinstance(r["answer"], str)
        json.dumps(r)  # the whole record is JSON-serialisable
        assert dm.score(r, r["answer"])
    again = ReasoningDataModule(task=task, size=5, seed=3).records
    assert again == records  # deterministic per seed


def test_task_config_is_used():
    dm = ReasoningDataModule(task="chain_sum", size=6, task_config={"min_terms": 2, "max_terms": 2, "max_digits": 1})
    for r in dm.records:
        assert r["metadata"]["num_terms"] == 2
        assert int(r["answer"]) < 20


def test_chain_sum_scoring():
    dm = ReasoningDataModule(task="chain_sum", size=4)
    for r in dm.records:
        true = r["answer"]
        assert dm.score(r, true)
        assert dm.score(r, f" {true}.")
        assert not dm.score(r, str(int(true) + 1))
        assert not dm.score(r, None)
        scorer = dm.scorer_for(r)
        assert scorer(true) == 1.0 and scorer(str(int(true) + 1)) < 1.0


def test_basic_arithmetic_exact_string_scorer():
    # basic_arithmetic uses reasoning-gym's default scorer: exact string, partial credit otherwise.
    dm = ReasoningDataModule(task="basic_arithmetic", size=3, seed=7)
    record = dm.records[0]
    scorer = dm.scorer_for(record)
    assert scorer(record["answer"] + ".0") < 1.0
    assert dm.score(record, record["answer"] + ".0")  # check_answer tries the integer form


def test_scorer_rejects_foreign_record():
    dm = ReasoningDataModule(task="chain_sum", size=3)
    other = ReasoningDataModule(task="chain_sum", size=3, seed=99).records[0]
    with pytest.raises(ValueError, match="does not match"):
        dm.scorer_for(other)
    with pytest.raises(ValueError, match="outside"):
        dm.scorer_for({**dm.records[0], "index": 7})


def test_n_samples_and_dataloaders():
    dm = ReasoningDataModule(task="chain_sum", size=3, n_samples=4, batch_size=5)
    dm.setup("predict")
    records = dm.records
    assert len(records) == 12 and dm.num_problems == 3
    assert [(r["index"], r["sample"]) for r in records] == [(i, s) for i in range(3) for s in range(4)]
    for loader in (dm.predict_dataloader(), dm.test_dataloader(), dm.val_dataloader()):
        batches = list(loader)
        assert [len(b) for b in batches] == [5, 5, 2]
        assert all(isinstance(b, list) for b in batches)
        assert [r for b in batches for r in b] == records
    shuffled = [r["index"] for b in dm.train_dataloader() for r in b]  # each training problem once
    assert sorted(shuffled) == [0, 1, 2]
    assert shuffled == [r["index"] for b in dm.train_dataloader() for r in b]  # seeded


def test_holdout_split_and_epoch_orders():
    dm = ReasoningDataModule(task="chain_sum", size=30, n_samples=2, batch_size=4, holdout=5)
    assert [r["index"] for r in dm.train_records] == list(range(25))
    assert [(r["index"], r["sample"]) for r in dm.eval_records] == [(i, s) for i in range(25, 30) for s in range(2)]
    assert [r for b in dm.val_dataloader() for r in b] == dm.eval_records
    loader = dm.train_dataloader()
    orders = []
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)
        orders.append([r["index"] for b in loader for r in b])
    assert orders[0] == orders[2] != orders[1] and sorted(orders[1]) == list(range(25))
    loader.skip = 3  # what a mid-epoch resume sets: the first pass leaves out the batches already done
    assert [r["index"] for b in loader for r in b] == orders[0][12:]
    assert [r["index"] for b in loader for r in b] == orders[0]
    with pytest.raises(ValueError, match="holdout=30 must leave training problems"):
        ReasoningDataModule(task="chain_sum", size=30, holdout=30)
    # The held-out split decides which records are predicted: a resumed prediction run must match it.
    assert dm.record_settings()["holdout"] == 5
    assert "holdout" not in ReasoningDataModule(task="chain_sum", size=30).record_settings()


def test_lightning_predict_yields_records():
    from lightning.pytorch import LightningModule, Trainer

    class Echo(LightningModule):
        def predict_step(self, batch, batch_idx):
            return [(r["index"], r["sample"]) for r in batch]

    dm = ReasoningDataModule(task="chain_sum", size=3, n_samples=2, batch_size=4)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.predict(Echo(), datamodule=dm)
    assert [x for batch in out for x in batch] == [(i, s) for i in range(3) for s in range(2)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "chain_summ"}, r"unknown reasoning-gym task 'chain_summ'.*chain_sum.*reasoning_gym.factory.DATASETS"),
        ({"size": 0}, r"size=0 must be an integer >= 1"),
        ({"n_samples": 0}, r"n_samples=0"),
        ({"batch_size": 0}, r"batch_size=0"),
        ({"limit": 0}, r"limit=0 must be an integer >= 1 or None"),
        ({"format": "csv"}, r"format='csv' is not one of"),
        ({"task_config": {"min_termz": 2}}, r"\['min_termz'\] are not options of task 'chain_sum'.*min_terms"),
        ({"task_config": {"size": 5}}, r"must not set \['size'\]"),
        ({"task_config": {"min_terms": 5, "max_terms": 2}}, r"invalid task_config .*max_terms must be >= min_terms"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReasoningDataModule(**kwargs)


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        ReasoningDataModule(path=missing)


def test_task_config_with_path(gsm8k_file):
    with pytest.raises(ValueError, match="task_config"):
        ReasoningDataModule(path=gsm8k_file, task_config={"min_terms": 2})


@pytest.mark.parametrize(
    ("lines", "fmt", "match"),
    [
        (['{"question": "a", "answer": "1"}', "{not json"], "auto", r"bad\.jsonl, line 2: not valid JSON"),
        (['{"question": "a", "answer": "1"}', "", '{"q": "b", "answer": "2"}'], "auto", r"line 3: no question field"),
        (['{"question": "a"}'], "auto", r"line 1: no answer field 'answer'"),
        (['{"question": "a", "answer": "no hashes"}'], "gsm8k", r"line 1: format 'gsm8k' needs"),
        (['{"question": "a", "answer": "1"}'], "math500", r"line 1: no question field 'problem'"),
        (["[1, 2]"], "auto", r"line 1: expected a JSON object"),
        ([""], "auto", r"no problems"),
    ],
)
def test_jsonl_errors(tmp_path, lines, fmt, match):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dm = ReasoningDataModule(path=str(path), format=fmt)
    with pytest.raises(ValueError, match=match):
        dm.setup("predict")


def test_validation_split_is_separate_and_training_drops_held_out_questions():
    task_config = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}  # 200 distinct questions
    dm = ReasoningDataModule(task="chain_sum", task_config=task_config, size=300, holdout=20, validation=10,
                             n_samples=2)
    test_ids = [r["index"] for r in dm.eval_records if r["sample"] == 0]
    val_ids = [r["index"] for r in dm.val_records if r["sample"] == 0]
    assert test_ids == list(range(280, 300)) and val_ids == list(range(270, 280))
    assert [r for b in dm.val_dataloader() for r in b] == dm.val_records
    assert [r for b in dm.test_dataloader() for r in b] == dm.eval_records
    held_out = {r["question"] for r in dm.records[270 * 2:]}
    train = dm.train_records
    assert all(r["index"] < 270 and r["question"] not in held_out for r in train)
    # Questions repeat here, so some training problems were dropped: exactly those with a held-out question.
    kept = [r["index"] for r in dm.records[:270 * 2:2] if r["question"] not in held_out]
    assert [r["index"] for r in train] == kept and len(kept) < 270
    with pytest.raises(ValueError, match="holdout=20 \\+ validation=280 must leave training problems"):
        ReasoningDataModule(task="chain_sum", size=300, holdout=20, validation=280)
    with pytest.raises(ValueError, match="validation=5 needs a test split"):
        ReasoningDataModule(task="chain_sum", size=300, validation=5)
