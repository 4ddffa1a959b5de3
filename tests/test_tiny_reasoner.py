"""The in-repo tiny reasoning model: its tokenizer, its name, SFT that learns, saving and the OOD NLL."""

import os

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from softtok.callbacks import SavePretrained
from softtok.cli import cli
from softtok.data import InstructDataModule
from softtok.data.solutions import products_solution, worked_solution
from softtok.models import load_model, load_tokenizer, model_fingerprint, model_path
from softtok.modules import SFTModule
from softtok.tiny import THINK_END, char_tokenizer, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "continuous_cot", "pretrain_tiny.yaml")
SMALL = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 128}
TWO_TERMS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTTOK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tokenizer_round_trips_and_is_fixed(tmp_path):
    tokenizer = char_tokenizer()
    text = ("Q: State the final answer to the following arithmetic problem: 4 - 1 =\nA:\n"
            "4 - 1 = 3\nFinal answer: 3")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(ids)[2:5] == [" State", " the", " final"]  # words are one token
    assert tokenizer.encode(THINK_END, add_special_tokens=False) == [len(tokenizer) - 1]
    assert tokenizer.decode(tokenizer.encode("finalize 7*8", add_special_tokens=False)) == "finalize 7*8"
    assert char_tokenizer().get_vocab() == tokenizer.get_vocab()  # deterministic
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "1 + 2 ="}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "Q: 1 + 2 =\nA:\n"
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == ids


def test_tiny_config_refuses_bad_architectures():
    with pytest.raises(ValueError, match=r"\['hidden'\] are not fields of GPT2Config"):
        tiny_config(char_tokenizer(), {"model_type": "gpt2", "hidden": 3})
    with pytest.raises(ValueError, match=r"must not set \['vocab_size'\]"):
        tiny_config(char_tokenizer(), {"model_type": "gpt2", "vocab_size": 3})
    with pytest.raises(ValueError, match="model_type=None must be a transformers model type"):
        tiny_config(char_tokenizer(), {"hidden_size": 3})
    llama = tiny_config(char_tokenizer(), {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 2})
    assert llama.model_type == "llama" and llama.vocab_size == len(char_tokenizer())


def test_products_worked_solution():
    record = {"task": "products", "answer": "60", "metadata": {"expression": "3 * 4 * 5"}}
    assert worked_solution(record) == products_solution(record) == "3 * 4 = 12\n12 * 5 = 60\nFinal answer: 60"
    with pytest.raises(ValueError, match="is not 'a \\* b \\* c'"):
        products_solution({**record, "metadata": {"expression": "3 + 4"}})


def test_the_name_before_and_after_training(cache):
    # Before training: the tokenizer exists (fixed by code), the weights do not, and the error says how to make them.
    assert load_tokenizer("tiny-reasoner").get_vocab() == char_tokenizer().get_vocab()
    with pytest.raises(FileNotFoundError, match="softtok fit -c configs/continuous_cot/pretrain_tiny.yaml"):
        load_model("tiny-reasoner")
    model = AutoModelForCausalLM.from_config(tiny_config(char_tokenizer(), SMALL))
    module = type("M", (), {"lm": model, "tokenizer": char_tokenizer()})()
    trainer = type("T", (), {"is_global_zero": True})()
    SavePretrained("tiny-reasoner").on_fit_end(trainer, module)
    assert model_path("tiny-reasoner") == str(cache / "tiny-reasoner")
    loaded, _ = load_model("tiny-reasoner")
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
    before = model_fingerprint("tiny-reasoner")
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    SavePretrained("tiny-reasoner").on_fit_end(trainer, module)  # retrained: replaced, and another fingerprint
    assert model_fingerprint("tiny-reasoner") != before
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_sft_learns_its_training_problems(cache, tmp_path):
    """150 steps on 16 problems: the loss falls and greedy accuracy on them is far above chance."""
    import json

    import reasoning_gym

    problems = tmp_path / "train.jsonl"
    with open(problems, "w") as f:
        for entry in reasoning_gym.create_dataset("chain_sum", size=16, seed=3, **TWO_TERMS):
            record = {"question": entry["question"], "answer": entry["answer"], "metadata": entry["metadata"]}
            f.write(json.dumps({**record, "solution": worked_solution({**record, "task": "chain_sum"})}) + "\n")
    L.seed_everything(0)
    # The validation split is the training problems: accuracy on the training distribution.
    data = InstructDataModule(tokenizer="tiny-reasoner", source="jsonl", train_file=str(problems),
                              val_file=str(problems), instruction_field="question", target="solution",
                              batch_size=16, max_length=64)
    module = SFTModule(architecture=SMALL, lr=1e-2, warmup_steps=10)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(accelerator="cpu", max_steps=150, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    evaluator = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = evaluator.validate(module, datamodule=data, verbose=False)[0]
    # 16 two-term single-digit sums have 28 possible answers: chance is about 1 in 28.
    assert metrics["val/accuracy"] >= 0.5 and metrics["val/nll"] < 0.3


def test_recipe_parses_and_bad_input_fails_early(cache):
    parsed = cli(["-c", RECIPE], run=False)
    assert isinstance(parsed.model, SFTModule) and parsed.model.config.n_embd == 192
    with pytest.raises(ValueError, match="task 'basic_arithmetic' has none; tasks with solutions: chain_sum, products"):
        cli(["fit", "-c", RECIPE, "--data.init_args.task", "basic_arithmetic", "--data.init_args.task_config",
             "null"])
    with pytest.raises(ValueError, match="lr=0.0 must be a finite number > 0"):
        SFTModule(architecture=SMALL, lr=0.0)


def test_the_python_example_trains_saves_and_runs_rl(cache, tmp_path, monkeypatch, capsys):
    """examples/tiny_reasoner.py at a tiny budget: SFT -> SavePretrained -> RL on the folder -> SavePretrained."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("tiny_reasoner_example",
                                                  os.path.join(ROOT, "examples", "tiny_reasoner.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "tiny"
    monkeypatch.setattr(sys, "argv", ["x", "--sft-steps", "20", "--rl-steps", "2", "--out", str(out)])
    example.main()
    printed = capsys.readouterr().out
    assert "after SFT: greedy accuracy" in printed and "after 2 RL steps (soft)" in printed
    base, policy = load_model(str(out / "base"))[0], load_model(str(out / "soft"))[0]
    same = ("model_type", "n_embd", "n_layer", "n_head", "vocab_size")
    assert all(getattr(base.config, k) == getattr(policy.config, k) for k in same)  # both folders load, same shape
