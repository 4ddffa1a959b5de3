"""SoftPromptModule + InstructDataModule: frozen base, prompt-only checkpoints, exact resume, export CLI."""

import json
import re

import lightning as L
import peft
import pytest
import torch
from tiny import tiny_model

from softtok.answers import extract_answer
from softtok.data.instruct import InstructDataModule
from softtok.data.solutions import chain_sum_solution
from softtok.modules.soft_prompt import SoftPromptModule
from softtok.prompts import IAPTConfig, PrefixTuningConfig, PromptTuningConfig, prompt_from_checkpoint
from softtok.prompts.export import main as export_main

SUM_RE = re.compile(r"(\d)\+(\d)=")


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    with path.open("w") as f:
        for i in range(12):
            a, b = i % 10, (3 * i) % 10
            f.write(json.dumps({"instruction": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    return str(path)


def datamodule(tokenizer, jsonl, **kw):
    return InstructDataModule(tokenizer=tokenizer, source="jsonl", train_file=jsonl, val_file=jsonl,
                              test_file=jsonl, batch_size=4, **kw)


def module(tokenizer, config=None, **kw):
    config = config or PromptTuningConfig(n_virtual=3, init_text="abc")
    return SoftPromptModule.from_model(tiny_model("llama"), tokenizer, config, max_new_tokens=3, lr=0.05, **kw)


def trainer(tmp_path, **kw):
    kw = {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
          "num_sanity_val_steps": 0, "limit_val_batches": 1, "default_root_dir": str(tmp_path),
          "deterministic": True, **kw}
    return L.Trainer(accelerator="cpu", devices=1, **kw)


def last_ckpt(tmp_path):
    return sorted(tmp_path.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)[-1]


@pytest.mark.parametrize("config", [
    PromptTuningConfig(n_virtual=3, init_text="abc"),
    PrefixTuningConfig(n_virtual=2, init_text="ab", projection_hidden=4),
    IAPTConfig(n_virtual=2, init_text="ab", bottleneck=4),
], ids=["prompt_tuning", "prefix_tuning", "iapt"])
def test_fit_keeps_base_frozen_and_saves_prompt_only(config, tokenizer, jsonl, tmp_path):
    mod = module(tokenizer, config)
    base = {k: v.clone() for k, v in mod.model.state_dict().items()}
    start = {k: v.clone() for k, v in mod.prompt.state_dict().items()}
    trainer(tmp_path).fit(mod, datamodule=datamodule(tokenizer, jsonl))
    assert all(torch.equal(v, base[k]) for k, v in mod.model.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in mod.prompt.state_dict().items())
    ckpt = torch.load(last_ckpt(tmp_path), weights_only=True)  # plain types only
    assert ckpt["state_dict"] and all(k.startswith("prompt.") for k in ckpt["state_dict"])
    assert ckpt["softtok_prompt"]["method"] == config.method
    rebuilt = prompt_from_checkpoint(last_ckpt(tmp_path))
    assert all(torch.equal(v, mod.prompt.state_dict()[k]) for k, v in rebuilt.state_dict().items())


def test_resume_is_exact(tokenizer, jsonl, tmp_path):
    """2 epochs straight == 1 epoch, checkpoint, resume for the second (shuffled data, AdamW state)."""
    torch.manual_seed(0)
    straight = module(tokenizer, warmup_steps=2)
    trainer(tmp_path / "a", max_epochs=2).fit(straight, datamodule=datamodule(tokenizer, jsonl))
    first = module(tokenizer, warmup_steps=2)
    trainer(tmp_path / "b", max_epochs=1).fit(first, datamodule=datamodule(tokenizer, jsonl))
    resumed = module(tokenizer, warmup_steps=2)
    trainer(tmp_path / "c", max_epochs=2).fit(resumed, datamodule=datamodule(tokenizer, jsonl),
                                              ckpt_path=str(last_ckpt(tmp_path / "b")))
    for k, v in straight.prompt.state_dict().items():
        assert torch.equal(v, resumed.prompt.state_dict()[k]), k
    assert not torch.equal(first.prompt.prompt_embeddings, straight.prompt.prompt_embeddings)


def test_checkpoint_of_another_method_is_refused(tokenizer, jsonl, tmp_path):
    trainer(tmp_path, max_steps=1).fit(module(tokenizer), datamodule=datamodule(tokenizer, jsonl))
    ckpt = str(last_ckpt(tmp_path))
    prefix = module(tokenizer, PrefixTuningConfig(n_virtual=3, init_text="abc"))
    with pytest.raises(ValueError, match="'prompt_tuning' prompt but 'prefix_tuning'"):
        trainer(tmp_path / "x", max_epochs=2).fit(prefix, datamodule=datamodule(tokenizer, jsonl), ckpt_path=ckpt)
    longer = module(tokenizer, PromptTuningConfig(n_virtual=4, init_text="abc"))
    with pytest.raises(ValueError, match="n_virtual=3"):
        trainer(tmp_path / "y", max_epochs=2).fit(longer, datamodule=datamodule(tokenizer, jsonl), ckpt_path=ckpt)
    with pytest.raises(ValueError, match="'iapt' was expected"):
        prompt_from_checkpoint(ckpt, method="iapt")


def test_validate_test_predict(tokenizer, jsonl, tmp_path):
    mod, dm = module(tokenizer), datamodule(tokenizer, jsonl)
    t = trainer(tmp_path)
    (val,) = t.validate(mod, datamodule=dm)
    assert 0.0 <= val["val/exact_match"] <= 1.0 and val["val/loss"] > 0
    (test,) = t.test(mod, datamodule=dm)
    assert "test/exact_match" in test
    preds = [p for batch in t.predict(mod, datamodule=dm) for p in batch]
    assert len(preds) == 12 and {"question", "answer", "prediction", "extracted", "correct"} <= set(preds[0])


def test_exact_match_counts_correct_answers(tokenizer, jsonl, tmp_path):
    """Generation replaced by a solver (answers read off the prompt): 1.0; by a wrong answer: 0.0."""
    dm = datamodule(tokenizer, jsonl)

    def solve(prompt_ids, prompt_mask):
        texts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
        sums = [sum(int(d) for d in SUM_RE.findall(t)[-1]) for t in texts]
        return [f"It is {s}." for s in sums]

    for generate, expected in ((solve, 1.0), (lambda ids, mask: ["-1"] * len(ids), 0.0)):
        mod = module(tokenizer)
        mod.generate = generate
        (val,) = trainer(tmp_path, limit_val_batches=3).validate(mod, datamodule=dm)
        assert val["val/exact_match"] == expected


def test_export_cli(tokenizer, jsonl, tmp_path, capsys):
    mod = module(tokenizer)
    trainer(tmp_path, max_steps=2).fit(mod, datamodule=datamodule(tokenizer, jsonl))
    ckpt, out = str(last_ckpt(tmp_path)), tmp_path / "adapter"
    export_main([ckpt, str(out)])
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama"), str(out))
    enc = tokenizer(["1+2=", "9+9="], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits[:, 3:], mod.prompt.logits(mod.model, enc.input_ids,
                                                                                 enc.attention_mask))
    with pytest.raises(SystemExit) as err:  # exists: refuse
        export_main([ckpt, str(out)])
    assert err.value.code == 2 and "overwrite" in capsys.readouterr().err
    export_main([ckpt, str(out), "--overwrite"])
    iapt = module(tokenizer, IAPTConfig(n_virtual=2, init_text="ab"))
    trainer(tmp_path / "i", max_steps=1).fit(iapt, datamodule=datamodule(tokenizer, jsonl))
    with pytest.raises(SystemExit):
        export_main([str(last_ckpt(tmp_path / "i")), str(tmp_path / "iapt_out")])
    assert not (tmp_path / "iapt_out").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0.0}, "lr"), ({"match": "fuzzy"}, "match"), ({"warmup_steps": -1}, "warmup_steps"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"prompt": "prompt_tuning"}, "PromptConfig"),
])
def test_module_bad_input_before_loading(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoftPromptModule(**{"model": "no-such-model-anywhere", **kwargs})


# ----------------------------------------------------------------- data
def test_instruct_batches(tokenizer, jsonl):
    dm = datamodule(tokenizer, jsonl, system_prompt="Add.")
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    first = dm.records["val"][0]
    prompt_text = tokenizer.apply_chat_template(dm.messages(first["question"]), add_generation_prompt=True,
                                                tokenize=False)
    assert prompt_text.startswith("<bos>system: Add.")
    prompt = tokenizer(prompt_text, add_special_tokens=False).input_ids
    answer = tokenizer(first["answer"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    n = len(prompt) + len(answer)
    assert batch["input_ids"][0, :n].tolist() == prompt + answer  # right-padded training view
    assert batch["labels"][0, :n].tolist() == [-100] * len(prompt) + answer  # loss on the answer only
    assert (batch["labels"][0, n:] == -100).all()
    assert batch["prompt_ids"][0, -len(prompt):].tolist() == prompt  # left-padded generation view
    assert batch["prompt_mask"][0].sum() == len(prompt)


def test_reasoning_gym_splits_are_held_out(tokenizer):
    dm = InstructDataModule(tokenizer=tokenizer, task="chain_sum", task_config={"min_terms": 2, "max_terms": 2,
                            "min_digits": 1, "max_digits": 1}, train_size=40, val_size=10, test_size=10, seed=3)
    records = dm.records
    assert [len(records[s]) for s in ("train", "val", "test")] == [40, 10, 10]
    train = {r["question"] for r in records["train"]}
    assert not train & {r["question"] for r in records["val"] + records["test"]}
    record = records["test"][0]
    assert dm.score(record, record["answer"], "test") and not dm.score(record, "-999", "test")
    again = InstructDataModule(tokenizer=tokenizer, task="chain_sum", task_config={"min_terms": 2, "max_terms": 2,
                               "min_digits": 1, "max_digits": 1}, train_size=40, val_size=10, test_size=10, seed=3)
    assert again.records == records  # splits are a function of the seed


def test_worked_solutions_train_the_steps_and_score_the_answer(tokenizer):
    config = {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 3}
    dm = InstructDataModule(tokenizer=tokenizer, task="chain_sum", task_config=config, train_size=30, val_size=0,
                            test_size=30, seed=1, target="solution")
    for split, record in [("train", r) for r in dm.records["train"]] + [("test", r) for r in dm.records["test"]]:
        lines = record["solution"].split("\n")
        assert len(lines) == record["metadata"]["num_terms"]  # one line per operation, then the answer
        for line in lines[:-1]:  # every partial sum is right (an independent eval of each line)
            left, right = line.split(" = ")
            assert eval(left) == int(right)  # noqa: S307 (digits and +/- only)
        # the extracted final answer passes reasoning-gym's own scorer
        assert dm.score(record, extract_answer(record["solution"]), split)
    batch = next(iter(dm.train_dataloader()))
    first = [r for r in dm.records["train"] if r["question"] == batch["records"][0]["question"]][0]
    target = tokenizer(first["solution"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert [t for t in batch["labels"][0].tolist() if t != -100] == target  # the loss is on the solution
    assert batch["answers"][0] == first["answer"]  # scoring still uses the reference answer


def test_worked_solutions_from_jsonl(tokenizer, tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"instruction": "2+3+4=", "answer": "9", "steps": "2+3=5\n5+4=9"}) + "\n")
    dm = InstructDataModule(tokenizer=tokenizer, source="jsonl", train_file=str(path), target="solution",
                            solution_field="steps")
    assert dm.records["train"][0]["solution"] == "2+3=5\n5+4=9"
    with pytest.raises(ValueError, match="no field 'solution'"):
        _ = InstructDataModule(tokenizer=tokenizer, source="jsonl", train_file=str(path), target="solution").records


def test_chain_sum_solution_rejects_a_wrong_record():
    record = {"task": "chain_sum", "answer": "5", "metadata": {"expression": "2 + 2"}}
    with pytest.raises(ValueError, match="give 4"):
        chain_sum_solution(record)
    with pytest.raises(ValueError, match="'a \\+ b"):
        chain_sum_solution({**record, "metadata": {"expression": "2 * 2"}})


@pytest.mark.parametrize("kwargs, match", [
    ({"target": "steps"}, "target='steps'"), ({"task": "basic_arithmetic", "target": "solution"}, "chain_sum"),
    ({"source": "hub"}, "source"), ({"task": "no_such_task"}, "no_such_task"), ({"train_size": 0}, "train_size"),
    ({"source": "jsonl"}, "train_file"), ({"source": "jsonl", "train_file": "/nope.jsonl"}, "does not exist"),
    ({"task_config": {"bogus": 1}}, "bogus"),
])
def test_datamodule_bad_input(tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        InstructDataModule(tokenizer=tokenizer, **kwargs)
