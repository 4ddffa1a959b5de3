"""The Soft Thinking recipe end to end through the ``softtok`` CLI on a tiny saved model."""

import json
import os
import re
import subprocess
import sys

import pytest
from tiny import QUESTIONS, tiny_tokenizer

from softtok import demo
from softtok.callbacks import read_jsonl
from softtok.cli import cli
from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.modules import SoftThinkingModule, soft_thinking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "soft_thinking", "soft.yaml")



def args(subcommand, model_dir, data_file, output, *extra):
    return [
        subcommand, "-c", RECIPE,
        "--model.init_args.model", model_dir,
        "--model.init_args.generation.max_think_tokens", "12",
        "--model.init_args.generation.max_answer_tokens", "4",
        "--data.init_args.path", data_file, "--data.init_args.task_config", "null",
        "--data.init_args.batch_size", "2",
        "--trainer.accelerator", "cpu",
        "--trainer.callbacks.init_args.output_path", str(output),
        *extra,
    ]


def test_predict_writes_one_line_per_sample_in_order(model_dir, data_file, tmp_path):
    out = tmp_path / "pred.jsonl"
    cli(args("predict", model_dir, data_file, out, "--data.init_args.n_samples", "2",
             "--model.init_args.generation.mode", "gumbel"))
    records = read_jsonl(out)
    assert [(r["index"], r["sample"]) for r in records] == [(i, s) for i in range(len(QUESTIONS)) for s in (0, 1)]
    assert all(r["think_end"] in ("think_end", "cold_stop", "budget", "eos") for r in records)
    assert all(r["think_tokens"] <= 12 and r["answer_tokens"] <= 4 for r in records)
    assert not list(tmp_path.glob("*.partial"))  # journals are merged and removed


def test_resume_skips_finished_problems(model_dir, data_file, tmp_path):
    out = tmp_path / "pred.jsonl"
    cli(args("predict", model_dir, data_file, out))
    full = read_jsonl(out)
    # Simulate a crash after two records (and half a line), then resume.
    journal = tmp_path / "pred.jsonl.rank0.partial"
    kept = [{**r, "marker": "from-first-run"} for r in full[:2]]
    journal.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"index": 2, "sam')
    out.unlink()
    cli(args("predict", model_dir, data_file, out, "--trainer.callbacks.init_args.resume", "true"))
    resumed = read_jsonl(out)
    assert [r.get("marker") for r in resumed] == ["from-first-run"] * 2 + [None] * 3
    strip = lambda r: {k: v for k, v in r.items() if k not in ("marker", "batch_seconds")}  # noqa: E731
    assert [strip(r) for r in resumed] == [strip(r) for r in full]  # greedy answers: same records


def test_test_subcommand_logs_metrics(model_dir, data_file, tmp_path):
    run = cli(args("test", model_dir, data_file, tmp_path / "unused.jsonl"))
    metrics = run.trainer.callback_metrics
    for key in ("accuracy", "pass@1", "mean_think_tokens", "cold_stop_rate", "mean_entropy"):
        assert key in metrics
    assert 0 < metrics["mean_think_tokens"] <= 12


@pytest.mark.parametrize("recipe", ["swir", "multiplex"])
def test_swir_and_multiplex_recipes_predict_and_test(model_dir, data_file, tmp_path, recipe):
    """The two recipes run end to end on a tiny model; SwiReasoning rows carry their latent statistics, which the
    test metrics average (window 2 so that rows switch within the 12-step budget)."""
    out = tmp_path / "pred.jsonl"
    recipe_args = args("predict", model_dir, data_file, out, "--model.init_args.generation.window_size", "2",
                       "--model.init_args.keep_trace", "true", "--model.init_args.generation.return_topk", "true")
    recipe_args[2] = os.path.join(ROOT, "configs", "soft_thinking", f"{recipe}.yaml")
    cli(recipe_args)
    records = read_jsonl(out)
    assert len(records) == len(QUESTIONS)
    for r in records:
        if recipe == "swir":
            flags = r["latent"]
            assert r["latent_fraction"] == pytest.approx(sum(flags) / len(flags) if flags else 0.0)
            assert sum(r["latent_segments"]) == sum(flags) and r["switch_count"] >= 0
        else:
            assert "latent_fraction" not in r and all(len(ids) == 3 for ids in r["topk_ids"])
    recipe_args[0] = "test"
    metrics = cli(recipe_args).trainer.callback_metrics
    assert ("mean_latent_fraction" in metrics) == (recipe == "swir")


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if the model weights load or the generator runs (a check came too late)."""

    def too_late(*args, **kwargs):
        raise AssertionError("expensive work started before the bad setting was reported")

    monkeypatch.setattr(soft_thinking, "load_model", too_late)
    monkeypatch.setattr(SoftThinkingGenerator, "generate", too_late)


@pytest.mark.parametrize(("pass_k", "n_samples"), [("[4]", "1"), ("[1,2,8]", "4")])
def test_pass_k_above_n_samples_fails_before_any_work(model_dir, data_file, tmp_path, nothing_loads, pass_k,
                                                      n_samples):
    with pytest.raises(ValueError, match=r"pass_k=\[.*\] needs n_samples >= \d+ .* n_samples=" + n_samples) as err:
        cli(args("test", model_dir, data_file, tmp_path / "unused.jsonl", "--model.init_args.pass_k", pass_k,
                 "--data.init_args.n_samples", n_samples))
    assert f"pass_k values <= {n_samples}" in str(err.value)


def test_pass_k_is_not_checked_for_predict(model_dir, data_file, tmp_path):
    out = tmp_path / "pred.jsonl"
    cli(args("predict", model_dir, data_file, out, "--model.init_args.pass_k", "[4]"))  # pass@k is a test metric
    assert len(read_jsonl(out)) == len(QUESTIONS)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (["--data.init_args.task", "chain_summ"], "unknown reasoning-gym task 'chain_summ'"),
        (["--data.init_args.task_config", '{"min_termz": 2}'], "min_termz"),
        (["--data.init_args.n_samples", "0"], "n_samples=0 must be an integer >= 1"),
    ],
)
def test_data_errors_come_before_the_model_loads(model_dir, tmp_path, nothing_loads, override, named):
    base = ["-c", RECIPE, "--model.init_args.model", model_dir, "--trainer.accelerator", "cpu",
            "--trainer.callbacks.init_args.output_path", str(tmp_path / "x.jsonl")]
    with pytest.raises(ValueError, match=re.escape(named)):
        cli([*base, *override], run=False)


def test_a_bad_jsonl_line_fails_before_the_model_loads(model_dir, tmp_path, nothing_loads):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1 + 1 =", "answer": "2"}) + "\n" + json.dumps({"q": "x", "answer": "1"}))
    with pytest.raises(ValueError, match="bad.jsonl, line 2: no question field 'question'"):
        cli(args("predict", model_dir, str(bad), tmp_path / "pred.jsonl"))
    assert not list(tmp_path.glob("pred.jsonl*"))  # the writer started nothing either


def test_generation_and_module_settings_fail_at_construction(model_dir, nothing_loads):
    with pytest.raises(ValueError, match="mode='sofft' is unknown; allowed: discrete"):
        SoftThinkingModule(model_dir, generation={"mode": "sofft", "think_end": "Final answer:"})
    with pytest.raises(ValueError, match=r"pass_k=\[0\] must be a non-empty list of integers >= 1"):
        SoftThinkingModule(model_dir, pass_k=[0])
    with pytest.raises(ValueError, match="dtype='float8' is not supported; allowed: float32"):
        SoftThinkingModule(model_dir, dtype="float8")


def test_tokenizer_checks_come_before_the_weights_load(model_dir, tmp_path, nothing_loads):
    with pytest.raises(ValueError, match=r"model=.*think_end='\[\[stop\]\]' cannot be encoded by this tokenizer"):
        SoftThinkingModule(model_dir, generation=GenerationConfig(think_end="[[stop]]")).load()
    no_template = tmp_path / "no-template"
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    tokenizer.save_pretrained(no_template)
    with pytest.raises(ValueError, match="the chat template of model=.* cannot format a prompt"):
        SoftThinkingModule(str(no_template), generation=GenerationConfig(think_end="Final answer:")).load()


def test_output_path_errors_before_work(model_dir, data_file, tmp_path, nothing_loads, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises((ValueError, SystemExit)) as err:  # the CLI may report it as a config error and exit
        cli(args("predict", model_dir, data_file, a_file / "pred.jsonl"))
    assert "which is a file, not a directory" in str(err.value) + capsys.readouterr().err


def test_demo_runs_a_recipe_without_the_writer(model_dir, tmp_path, capsys):
    """``make demo``: `--trainer.callbacks null`, the model loaded on first use, a table and the accuracy."""
    with open(RECIPE) as f:
        recipe = f.read().replace("model: smollm2-135m", f"model: {model_dir}")
    recipe = recipe.replace("max_think_tokens: 192", "max_think_tokens: 8")
    config = tmp_path / "tiny.yaml"
    config.write_text(recipe)
    demo.main(["--config", str(config), "--problems", "2", "--batch-size", "2"])
    assert "accuracy" in capsys.readouterr().out
    assert not (tmp_path / "outputs").exists() and not os.path.exists(os.path.join(ROOT, "outputs", "tiny.jsonl"))


def test_unknown_config_key_is_an_error(model_dir, data_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(args("predict", model_dir, data_file, tmp_path / "x.jsonl", "--model.init_args.generation.mood", "soft"),
            run=False)
    assert "mood" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_merge_in_input_order(model_dir, data_file, tmp_path):
    out = tmp_path / "ddp.jsonl"

    def ddp(*extra, timeout=600):
        cmd = [sys.executable, "-m", "softtok.cli", *args("predict", model_dir, data_file, out, "--trainer.strategy",
                                                          "ddp", "--trainer.devices", "2", *extra)]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)

    proc = ddp()
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(out)
    assert [r["index"] for r in records] == list(range(len(QUESTIONS)))
    single = tmp_path / "single.jsonl"
    cli(args("predict", model_dir, data_file, single))
    assert [r["thinking"] for r in records] == [r["thinking"] for r in read_jsonl(single)]

    # A 2-rank run that crashed: one record in each rank's journal (one line cut in half), no output.
    marked = [{**r, "marker": "kept"} for r in records[:2]]
    (tmp_path / "ddp.jsonl.rank0.partial").write_text(json.dumps(marked[0]) + "\n")
    (tmp_path / "ddp.jsonl.rank1.partial").write_text(json.dumps(marked[1]) + "\n" + '{"index": 3, "sa')
    out.unlink()
    # Other settings: every rank refuses before any work, and none is left waiting at a barrier.
    proc = ddp("--model.init_args.generation.max_think_tokens", "8", timeout=300)
    assert proc.returncode != 0 and "model.generation.max_think_tokens: 12 -> 8" in proc.stderr
    assert len(read_jsonl(tmp_path / "ddp.jsonl.rank1.partial")) == 1
    # The same command: both journals are kept, the rest is generated, rank 0 merges in input order.
    proc = ddp()
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = read_jsonl(out)
    assert [r.get("marker") for r in resumed] == ["kept"] * 2 + [None] * 3
    assert [r["thinking"] for r in resumed] == [r["thinking"] for r in records]
    assert not list(tmp_path.glob("ddp.jsonl.rank*.partial"))
