"""Every soft-prompt recipe runs through the ``softtok`` CLI on the embedded model (fast_dev_run)."""

import os
import re

import pytest
import torch
import yaml

from softtok.cli import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ["prompt_tuning", "prefix_tuning", "iapt"]


def recipe(name):
    return os.path.join(ROOT, "configs", "soft_prompt", f"{name}.yaml")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_keys_are_commented(name):
    """Every key line of the YAML carries a comment (house style)."""
    with open(recipe(name)) as f:
        lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    keys = [line for line in lines if ":" in line.split("#")[0] and not line.split("#")[0].rstrip().endswith(":")]
    assert keys and all("#" in line for line in keys), [line for line in keys if "#" not in line]
    with open(recipe(name)) as f:
        assert yaml.safe_load(f)["model"]["init_args"]["prompt"]["class_path"].startswith("softtok.prompts.")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_commands_name_its_checkpoint_folder(name):
    """The --ckpt_path in a recipe's header is where its first fit writes last.ckpt (logger folder, version_0)."""
    with open(recipe(name)) as f:
        text = f.read()
    paths = set(re.findall(r"--ckpt_path (\S+)", text))
    trainer = yaml.safe_load(text)["trainer"]
    (checkpoint,) = [c["init_args"] for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert "dirpath" not in checkpoint and checkpoint["save_last"]  # Lightning puts it under the logger's version
    save_dir = trainer["logger"]["init_args"]["save_dir"]
    assert paths == {os.path.join(save_dir, "lightning_logs", "version_0", "checkpoints", "last.ckpt")}


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_fast_dev_run(name, tmp_path):
    """`softtok fit -c configs/soft_prompt/<name>.yaml` on SmolLM2-135M: one training and one validation batch."""
    run = cli([
        "fit", "-c", recipe(name), "--trainer.fast_dev_run=true", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.accelerator=cpu",
        "--data.init_args.train_size=8", "--data.init_args.val_size=4", "--data.init_args.test_size=4",
        "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=4", "--model.init_args.max_new_tokens=2",
    ])
    metrics = run.trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/exact_match"} <= set(metrics)
    assert run.model.prompt.method == name
    assert not any(p.requires_grad for p in run.model.model.parameters())


@pytest.mark.slow
def test_recipe_fit_then_test_from_its_checkpoint(tmp_path):
    """The header's commands: `softtok fit` writes last.ckpt, `softtok test --ckpt_path` parses it back."""
    path = recipe("prompt_tuning")
    small = ["--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", "--trainer.accelerator=cpu",
             "--data.init_args.train_size=4", "--data.init_args.val_size=2", "--data.init_args.test_size=2",
             "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=2",
             "--model.init_args.max_new_tokens=2"]
    fit = cli(["fit", "-c", path, "--trainer.max_steps=2", "--trainer.val_check_interval=2", *small])
    trained = {k: v.clone() for k, v in fit.model.prompt.state_dict().items()}
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    test = cli(["test", "-c", path, f"--ckpt_path={last}", *small])
    assert "test/exact_match" in test.trainer.callback_metrics
    assert test.model.prompt_config == fit.model.prompt_config
    for key, value in test.model.prompt.state_dict().items():
        assert torch.equal(value, trained[key])  # the tested prompt is the trained one
