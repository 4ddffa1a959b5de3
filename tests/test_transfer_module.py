"""PromptTransferModule / TransferDataModule / LayerDistillationModule: selection on public data only, recipes."""

import json
import os

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, LlamaConfig

from softtok.callbacks import SavePretrained
from softtok.cli import cli
from softtok.data.instruct import InstructDataModule
from softtok.modules.distil import LayerDistillationModule
from softtok.modules.transfer import PromptTransferModule, TransferDataModule
from softtok.prompts import PromptTuningConfig, export_peft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, rows):
    path.write_text("".join(json.dumps({"instruction": q, "answer": a}) + "\n" for q, a in rows))
    return str(path)


@pytest.fixture
def files(tmp_path):
    public = [(f"{a}*{b}=", str(a * b)) for a in range(1, 5) for b in range(1, 4)]
    task = [(f"{a}+{b}=", str(a + b)) for a in range(3) for b in range(3)]
    return {"public_train": write(tmp_path / "pub_train.jsonl", public[:8]),
            "public_val": write(tmp_path / "pub_val.jsonl", public[8:]),
            "task": write(tmp_path / "task.jsonl", task),
            "poison": write(tmp_path / "poison.jsonl", [(q[::-1] + "??", "999") for q, _ in task])}


class TaskSpy(InstructDataModule):
    """A task datamodule that records which splits anyone asked for."""

    reads: list

    def train_dataloader(self):
        self.reads.append("train")
        return super().train_dataloader()

    def val_dataloader(self):
        self.reads.append("val")
        return super().val_dataloader()


def fit_transfer(tokenizer, files, tmp_path, task_file, tag):
    torch.manual_seed(0)
    source_model, target_model = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    source_prompt = PromptTuningConfig(n_virtual=3, init="random").build(source_model, tokenizer)
    module = PromptTransferModule.from_models(target_model, tokenizer, source_model, tokenizer, source_prompt,
                                              PromptTuningConfig(n_virtual=3, init="random"), lr=0.05,
                                              max_new_tokens=2)
    public = InstructDataModule(tokenizer=tokenizer, source="jsonl", train_file=files["public_train"],
                                val_file=files["public_val"], batch_size=4, shuffle=False)
    task = TaskSpy(tokenizer=tokenizer, source="jsonl", train_file=task_file, val_file=task_file,
                   test_file=task_file, batch_size=4)
    task.reads = []
    checkpoint = ModelCheckpoint(dirpath=tmp_path / tag, monitor="val/transfer_loss", mode="min", save_top_k=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=6, val_check_interval=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[checkpoint], deterministic=True)
    data = TransferDataModule(public, task)
    trainer.fit(module, datamodule=data)
    best = torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"]
    return module, trainer, data, task, checkpoint, best


def test_selection_reads_only_public_data(tokenizer, files, tmp_path):
    """Poisoning the task split (other questions, wrong answers) changes neither training nor selection."""
    _, _, _, clean_task, clean_ckpt, clean_best = fit_transfer(tokenizer, files, tmp_path, files["task"], "clean")
    module, trainer, data, task, ckpt, best = fit_transfer(tokenizer, files, tmp_path, files["poison"], "poison")
    assert clean_task.reads == task.reads == []  # nobody asked for the task's training or validation batches
    assert os.path.basename(ckpt.best_model_path) == os.path.basename(clean_ckpt.best_model_path)
    assert ckpt.best_model_score.item() == clean_ckpt.best_model_score.item()
    assert best.keys() == {"prompt.prompt_embeddings"}
    assert torch.equal(best["prompt.prompt_embeddings"], clean_best["prompt.prompt_embeddings"])
    # The task is only met at test time, where the poisoned answers do count: the split is really the task's.
    trainer.test(module, datamodule=data, verbose=False)
    assert trainer.callback_metrics["test/exact_match"].item() == 0.0


def test_transfer_module_checks_and_init(tokenizer):
    model = tiny_model("llama")
    source_prompt = PromptTuningConfig(n_virtual=3, init="random").build(model, tokenizer)
    module = PromptTransferModule.from_models(model, tokenizer, tiny_model("llama", seed=3), tokenizer,
                                              source_prompt, PromptTuningConfig(n_virtual=3, init="random"))
    assert torch.equal(module.prompt.prompt_embeddings, source_prompt.prompt_embeddings)  # init_from_source
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["prompt.prompt_embeddings"]
    with pytest.raises(ValueError, match="init_from_source"):
        PromptTransferModule.from_models(model, tokenizer, model, tokenizer, source_prompt,
                                         PromptTuningConfig(n_virtual=4, init="random"))
    with pytest.raises(ValueError, match="variant='relative'"):
        PromptTransferModule.from_models(model, tokenizer, model, tokenizer, source_prompt, variant="relative")
    with pytest.raises(ValueError, match="source_model"):
        PromptTransferModule(PromptTuningConfig(n_virtual=3, init="random"), model="smollm2-135m")
    wide = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=64,
                                                        num_hidden_layers=2, num_attention_heads=4,
                                                        num_key_value_heads=2))
    with pytest.raises(ValueError, match="source prompt"):  # a prompt of another width, also without init_from_source
        PromptTransferModule.from_models(model, tokenizer, wide, tokenizer, source_prompt, init_from_source=False)
    different = tiny_tokenizer()
    different.add_tokens(["<new>"])
    with pytest.raises(ValueError, match="one tokenizer"):
        PromptTransferModule.from_models(model, tokenizer, model, different, source_prompt)


def test_distillation_module_trains_the_student_and_saves_it(model_dir, tokenizer, files, tmp_path):
    module = LayerDistillationModule(model=model_dir, keep=[1], lr=1e-2, warmup_steps=0)
    teacher = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    embeddings = module.lm.get_input_embeddings().weight.clone()
    data = InstructDataModule(tokenizer=model_dir, source="jsonl", train_file=files["public_train"],
                              val_file=files["public_val"], batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=8, logger=False, enable_progress_bar=False, inference_mode=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                        callbacks=[SavePretrained(str(tmp_path / "small"))], default_root_dir=str(tmp_path))
    before = trainer.validate(module, datamodule=data, verbose=False)[0]["val/kl"]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]["val/kl"]
    assert after < before
    assert all(torch.equal(v, teacher[k]) for k, v in module.teacher.state_dict().items())
    assert torch.equal(module.lm.get_input_embeddings().weight, embeddings)  # train_embeddings: false
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert saved.config.num_hidden_layers == 1
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False)
    assert ckpt["state_dict"] and all(k.startswith("lm.") for k in ckpt["state_dict"])


@pytest.mark.parametrize("name", ["transfer", "distil_small"])
def test_recipe_keys_are_commented(name):
    with open(os.path.join(ROOT, "configs", "soft_prompt", f"{name}.yaml")) as f:
        lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    keys = [line for line in lines if ":" in line.split("#")[0] and not line.split("#")[0].rstrip().endswith(":")]
    assert keys and all("#" in line for line in keys), [line for line in keys if "#" not in line]


def test_transfer_recipe_runs_on_tiny_models(model_dir, tokenizer, files, tmp_path):
    """`softtok fit -c configs/soft_prompt/transfer.yaml` with tiny models in place of SmolLM2 and its small copy."""
    prompt = PromptTuningConfig(n_virtual=3, init="random").build(tiny_model("llama"), tokenizer)
    folder = export_peft(prompt, tmp_path / "source_prompt", base_model_name_or_path=model_dir)
    with open(os.path.join(ROOT, "configs", "soft_prompt", "transfer.yaml")) as f:
        config = yaml.safe_load(f)
    assert config["model"]["init_args"]["loss"] == "kl" and config["model"]["init_args"]["temperature"] == 2.0
    public = [f"--data.init_args.public.init_args.{k}" for k in ("tokenizer", "source", "train_file", "val_file")]
    task = [f"--data.init_args.task.init_args.{k}" for k in ("tokenizer", "source", "test_file")]
    args = [
        "-c", os.path.join(ROOT, "configs", "soft_prompt", "transfer.yaml"),
        f"--model.init_args.model={model_dir}", f"--model.init_args.source_model={model_dir}",
        f"--model.init_args.source_prompt={folder}", "--model.init_args.max_new_tokens=2",
        "--model.init_args.prompt.init_args.n_virtual=3", "--model.init_args.prompt.init_args.init=random",
        f"{public[0]}={model_dir}", f"{public[1]}=jsonl", f"{public[2]}={files['public_train']}",
        f"{public[3]}={files['public_val']}", f"{task[0]}={model_dir}", f"{task[1]}=jsonl",
        f"{task[2]}={files['task']}", "--data.init_args.task.init_args.target=answer",
        "--trainer.max_steps=2", "--trainer.val_check_interval=1",
        "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", "--trainer.accelerator=cpu",
        "--data.init_args.public.init_args.batch_size=4",
    ]
    # The same model and prompt on both sides (init_from_source): the held-out transfer loss starts at 0.
    assert cli(["validate", *args]).trainer.callback_metrics["val/transfer_loss"].item() < 1e-6
    fit = cli(["fit", *args])
    assert {"train/transfer_loss", "val/transfer_loss"} <= set(fit.trainer.callback_metrics)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    # `softtok test --ckpt_path`: the checkpoint (prompt only) parses back and the task split is scored.
    test = cli(["test", *args, f"--ckpt_path={last}"])
    assert "test/exact_match" in test.trainer.callback_metrics
    saved = torch.load(last, weights_only=True)["state_dict"]["prompt.prompt_embeddings"]
    assert torch.equal(test.model.prompt.prompt_embeddings, saved)  # the tested prompt is the checkpoint's


def test_example_runs_on_a_tiny_model(model_dir, capsys):
    """examples/prompt_transfer.py end to end (distil, tune, transfer, select, score) on a tiny saved model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("prompt_transfer_example",
                                                  os.path.join(ROOT, "examples", "prompt_transfer.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    scores = example.run(model_dir, steps=2)
    assert set(scores) == {"L", "S + P_S", "L + P_L (transferred)"} and all(0 <= v <= 1 for v in scores.values())
    assert "held-out public transfer loss" in capsys.readouterr().out
