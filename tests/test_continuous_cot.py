"""``ContinuousCoTModule`` with the Trainer: resume, DDP, LoRA, KL, the CLI recipes and bad input."""

import csv
import json
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from tiny import QUESTIONS, tiny_model

from softtok.cli import cli
from softtok.data import ReasoningDataModule
from softtok.modules import ContinuousCoTModule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "configs", "continuous_cot")
ROLLOUT = dict(mode="soft", group_size=4, think_end="</think>", max_think_tokens=6, max_answer_tokens=3)


def char_reward(prompts, completions, references):
    """A reward that differs between rollouts: the share of letters among the completion's characters."""
    return [sum(c.isalpha() for c in text) / max(len(text), 1) for text in completions]


@pytest.fixture
def problems(tmp_path):
    """15 problems (QUESTIONS three times) as a JSONL file."""
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"question": f"{q} ({i})", "answer": a}) + "\n"
                            for i in range(3) for q, a in QUESTIONS))
    return str(path)


def make_module(model_dir, **kwargs):
    kwargs = {"rollout": ROLLOUT, "rewards": [char_reward], "system_prompt": None, "lr": 1e-3, "warmup_steps": 1,
              "eval_modes": ["hard_greedy", "soft_sampled"], "pass_k": [1, 2], **kwargs}
    return ContinuousCoTModule(model_dir, **kwargs)


def trainer(tmp_path, max_steps, callbacks=(), **kwargs):
    return L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                     default_root_dir=str(tmp_path), callbacks=list(callbacks),
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), **kwargs)


class StepRecorder(Callback):
    """Each step's prompts (problem indices), loss and KL."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append({"problems": [r["index"] for r in batch]})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.steps[-1].update({k: float(metrics[f"train/{k}"]) for k in ("loss", "reward_mean", "kl") if
                               f"train/{k}" in metrics})


class StopAfter(Callback):
    def __init__(self, steps):
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = trainer.global_step >= self.steps


def fit(model_dir, problems, tmp_path, max_steps, ckpt_path=None, callbacks=(), **module_kwargs):
    L.seed_everything(3)
    recorder = StepRecorder()
    data = ReasoningDataModule(path=problems, batch_size=2, holdout=3)
    run = trainer(tmp_path, max_steps, [recorder, *callbacks])
    module = make_module(model_dir, **module_kwargs)
    run.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return recorder.steps, module


@pytest.mark.parametrize("lora", [None, {"r": 2, "target_modules": ["q_proj", "v_proj"]}], ids=["full", "lora"])
def test_resume_from_a_mid_epoch_checkpoint_continues_exactly(model_dir, problems, tmp_path, lora):
    """Steps 3-4 after resuming from step 2 equal steps 3-4 of an uninterrupted run (same prompts, same loss)."""
    straight, module = fit(model_dir, problems, tmp_path / "a", 4, lora=lora)
    # A run planned for 4 steps (the cosine schedule spans max_steps) stops after its step-2
    # checkpoint, as a crash would.
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=2)
    fit(model_dir, problems, tmp_path / "b", 4, callbacks=[checkpoint, StopAfter(2)], lora=lora)
    path = tmp_path / "ckpt" / "step=2.ckpt"
    resumed, resumed_module = fit(model_dir, problems, tmp_path / "c", 4, ckpt_path=str(path), lora=lora)
    assert len(straight) == 4 and len(resumed) == 2  # 6 training problems per epoch at 2 a step: mid-epoch
    assert resumed == straight[2:]
    assert any(s["loss"] != 0 for s in straight)
    for (name, a), b in zip(module.lm.state_dict().items(), resumed_module.lm.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    saved = torch.load(path, weights_only=True)
    trained = {f"lm.{n}" for n, p in module.lm.named_parameters() if p.requires_grad}
    if lora:
        assert set(saved["state_dict"]) == trained and all("lora_" in k for k in trained)
    else:
        assert trained <= set(saved["state_dict"])


def test_kl_to_the_initial_policy_starts_at_zero(model_dir, problems, tmp_path):
    """With beta > 0 the reference is the initial policy: the first step's KL is 0, later ones are not."""
    steps, _ = fit(model_dir, problems, tmp_path, 3, algorithm={"beta": 0.1})
    assert steps[0]["kl"] == 0.0 and steps[2]["kl"] > 0.0


class GradRecorder(Callback):
    def __init__(self, path):
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0 and trainer.is_global_zero:
            torch.save({n: p.grad.detach().clone() for n, p in pl_module.lm.named_parameters()}, self.path)


def first_step_grads(model_dir, problems, tmp_path, devices):
    L.seed_everything(3)
    path = str(tmp_path / f"grads{devices}.pt")
    data = ReasoningDataModule(path=problems, batch_size=4 // devices, limit=5, holdout=1)  # 4 training problems
    module = make_module(model_dir, rollout={**ROLLOUT, "group_size": 3},
                         algorithm={"estimator": "grpo", "scale_rewards": "batch", "loss_type": "dapo",
                                    "max_grad_norm": None})
    run = trainer(tmp_path, 1, [GradRecorder(path)], devices=devices,
                  strategy="ddp_spawn" if devices > 1 else "auto")
    run.fit(module, datamodule=data)
    return torch.load(path)


@pytest.mark.slow
def test_ddp_gradients_equal_single_process(model_dir, problems, tmp_path):
    """Two processes with 2 prompts each compute the gradient of one process with the same 4 prompts.

    GRPO with batch-scaled rewards and the dapo token mean: both need the whole batch, so this
    fails unless the rewards and the step count are reduced over processes.
    """
    single = first_step_grads(model_dir, problems, tmp_path, 1)
    double = first_step_grads(model_dir, problems, tmp_path, 2)
    assert any(g.abs().sum() > 0 for g in single.values())
    for name, grad in single.items():
        # float32: the two processes pad their prompts to other widths (measured: 5e-5 relative);
        # a missing reduction is off by a factor of 2 or more.
        assert (double[name] - grad).norm() <= 1e-3 * grad.norm(), name


def recipe_args(subcommand, model_dir, problems, tmp_path, *extra):
    return [subcommand, "-c", os.path.join(RECIPES, "tiny.yaml"), "--model.init_args.model", model_dir,
            "--model.init_args.rollout.think_end", "</think>", "--model.init_args.system_prompt", "null",
            "--data.init_args.path", problems, "--data.init_args.task_config", "null",
            "--trainer.accelerator", "cpu", *extra]


def test_fit_then_test_through_the_cli(model_dir, problems, tmp_path, monkeypatch):
    """`softtok fit -c configs/continuous_cot/tiny.yaml`, then `softtok test --ckpt_path last.ckpt`."""
    import shutil

    monkeypatch.chdir(tmp_path)  # the recipe writes under outputs/
    base = str(shutil.copytree(model_dir, tmp_path / "base"))
    fitted = cli(recipe_args("fit", base, problems, tmp_path))
    logged = fitted.trainer.callback_metrics
    assert {"train/reward_mean", "train/think_end_rate", "train/budget_rate", "train/entropy",
            "val/hard_greedy/pass@1", "val/soft_sampled/pass@2"} <= set(logged)
    last = tmp_path / "outputs/continuous_cot/tiny/lightning_logs/version_0/checkpoints/last.ckpt"
    tested = cli(recipe_args("test", base, problems, tmp_path, "--ckpt_path", str(last)))
    metrics = tested.trainer.callback_metrics
    assert metrics["test/soft_sampled/num_samples"] == 8 and metrics["test/hard_greedy/num_samples"] == 4
    # The base model retrained in place (other weights, same folder): the checkpoint was trained from another
    # model, and is refused before any model loads (the CLI takes the model name from the checkpoint).
    tiny_model("llama", seed=1).save_pretrained(base)
    loads = []
    monkeypatch.setattr(ContinuousCoTModule, "load", lambda self: loads.append(1))
    with pytest.raises(ValueError, match="was trained from model=.* set model to the checkpoint's"):
        cli(recipe_args("test", base, problems, tmp_path, "--ckpt_path", str(last)))
    assert not loads


def test_predict_records_carry_the_eval_mode_settings(model_dir):
    """`predict` writes the first eval mode's records, so its settings (a resumable output's key) are that mode's."""
    greedy = make_module(model_dir, eval_modes=["soft_greedy"]).record_settings()["generation"]
    sampled = make_module(model_dir, eval_modes=["soft_sampled"]).record_settings()["generation"]
    assert greedy["answer_temperature"] == 0.0 and greedy["noise_factor"] == 0.0 and not greedy["record_inputs"]
    assert sampled["noise_factor"] == ROLLOUT.get("noise_factor", 0.33) and sampled["answer_temperature"] == 1.0


def test_save_pretrained_merges_lora(model_dir, tmp_path):
    """The exported folder of a LoRA policy gives the policy's logits (adapters merged) to plain from_pretrained."""
    from transformers import AutoModelForCausalLM

    from softtok.callbacks import SavePretrained

    module = make_module(model_dir, lora={"r": 2, "target_modules": ["q_proj", "v_proj"]})
    module.load()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.lm.named_parameters():
            if "lora_B" in name:
                p.normal_()
    trainer = type("T", (), {"is_global_zero": True})()
    SavePretrained(str(tmp_path / "policy")).on_fit_end(trainer, module)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ours, base = module.lm(input_ids=ids).logits, exported(input_ids=ids).logits
        with module.lm.disable_adapter():
            plain = module.lm(input_ids=ids).logits
    torch.testing.assert_close(base, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, ours)  # the adapters matter, and are in the export


@pytest.mark.slow
def test_ddp_fit_validates_every_problem_once(model_dir, problems, tmp_path, monkeypatch):
    """Two processes through the CLI: validation gathers the 4 held-out problems (8 samples) from both.

    The processes split the records so that one holds only second samples: its greedy modes
    see no record at all, and the metric sync must still work.
    """
    monkeypatch.chdir(tmp_path)
    cli(recipe_args("fit", model_dir, problems, tmp_path, "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2"))
    metrics = {r["step"]: r for r in csv.DictReader(open(
        tmp_path / "outputs/continuous_cot/tiny/lightning_logs/version_0/metrics.csv"))}
    val = {k: float(v) for k, v in metrics["1"].items() if k.startswith("val/") and v}
    assert val["val/hard_greedy/num_problems"] == val["val/soft_sampled/num_problems"] == 4
    assert val["val/hard_greedy/num_samples"] == 4 and val["val/soft_sampled/num_samples"] == 8


@pytest.mark.parametrize("recipe", ["hard", "soft", "fuzzy", "tiny", "tiny_reasoner"])
def test_recipes_parse(recipe):
    parsed = cli(["-c", os.path.join(RECIPES, f"{recipe}.yaml")], run=False)
    module = parsed.model
    assert module.rollout.mode == {"tiny": "soft", "tiny_reasoner": "soft"}.get(recipe, recipe)
    assert module.model_name == ("tiny-reasoner" if recipe == "tiny_reasoner" else "smollm2-135m")
    assert module._generator is None  # nothing loaded yet


def test_pass_k_above_n_samples_fails_at_setup(model_dir, problems, tmp_path):
    with pytest.raises(ValueError, match=r"pass_k=\[1, 2\] needs n_samples >= 2"):
        cli(recipe_args("test", model_dir, problems, tmp_path, "--data.init_args.n_samples", "1"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(rollout={**ROLLOUT, "group_size": 1}), "group_size=1 must be >= 2"),
    (dict(rollout={**ROLLOUT, "noise_factor": 0.0}), "noise_factor=0.0 must be > 0"),
    (dict(eval_modes=["hard"]), "evaluation mode 'hard' is unknown"),
    (dict(rewards=["accuracy"]), "reward 'accuracy' is unknown"),
    (dict(rewards=["softtok.rl.rewards.nothing"]), "cannot be imported"),
    (dict(lr=0.0), "lr=0.0 must be"),
    (dict(reference_model="x"), "only used with algorithm.beta > 0"),
    (dict(lora={"rank": 2}), "not a valid peft.LoraConfig"),
    (dict(algorithm={"beta": -1.0}), "beta=-1.0 must be"),
    (dict(algorithm={"epsilon_high": 0.28}), "epsilon_high=0.28 needs epsilon_low"),
    (dict(rollout={**ROLLOUT, "answer_temperature": 0.0}), "answer_temperature=0.0 must be > 0"),
    (dict(eval_modes=[]), r"eval_modes=\[\] must be a list of at least one of hard_greedy"),
    (dict(rewards="correctness"), "rewards='correctness' must be a list of rewards"),
    (dict(rewards=["correctness", "format"], reward_weights=[1.0]), r"reward_weights=\[1.0\] must be 2 finite"),
    (dict(weight_decay=float("inf")), "weight_decay=inf must be a finite number"),
])
def test_bad_settings_fail_before_loading(model_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_module(model_dir, **kwargs)


def test_bad_lora_target_and_reference_vocabulary(model_dir, tmp_path):
    module = make_module(model_dir, lora={"r": 2, "target_modules": ["q_proj", "query"]})
    with pytest.raises(ValueError, match=r"lora target_modules \['query'\] are not modules .*'q_proj'"):
        module.load()
    other = tmp_path / "other"
    other.mkdir()
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    module = make_module(model_dir, algorithm={"beta": 0.1}, reference_model=str(other))
    with pytest.raises(ValueError, match="has another vocabulary"):
        module.setup("fit")


def test_a_reward_returning_nan_names_itself(model_dir, problems, tmp_path):
    def broken(prompts, completions, references):
        return [float("nan")] * len(completions)

    module = make_module(model_dir, rewards=[broken])
    with pytest.raises(ValueError, match="reward function .*broken returned nan"):
        trainer(tmp_path, 1).fit(module, datamodule=ReasoningDataModule(path=problems, batch_size=2, holdout=3))
    assert module._generator is None  # found by the probe at setup, before the model loaded


@pytest.mark.slow
def test_the_lightning_example_runs_on_the_embedded_model(monkeypatch, capsys):
    """examples/continuous_cot_lightning.py: the module with a custom reward callable, a Trainer, SmolLM2."""
    import importlib.util
    import sys

    from test_models import require_embedded

    require_embedded("smollm2-135m")
    spec = importlib.util.spec_from_file_location("continuous_cot_lightning",
                                                  os.path.join(ROOT, "examples", "continuous_cot_lightning.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(sys, "argv", ["x", "--steps", "1", "--group", "2", "--think", "8"])
    example.main()
    assert "last step: reward" in capsys.readouterr().out


def test_chunk_size_reaches_the_recompute(model_dir, problems, tmp_path, monkeypatch):
    import softtok.rl.logprob as logprob

    seen = []
    original = logprob.cot_means

    def spy(logits, embedding, temperature, top_k=0, chunk_size=64):
        seen.append(chunk_size)
        return original(logits, embedding, temperature, top_k, chunk_size)

    monkeypatch.setattr(logprob, "cot_means", spy)
    fit(model_dir, problems, tmp_path, 1, chunk_size=3)
    assert seen and set(seen) == {3}
