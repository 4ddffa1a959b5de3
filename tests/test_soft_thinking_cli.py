"""The Soft Thinking recipe end to end through the ``softtok`` CLI on a tiny saved model."""

import json
import os
import subprocess
import sys

import pytest
from tiny import tiny_model, tiny_tokenizer

from softtok.callbacks import JsonlPredictionWriter, read_jsonl
from softtok.cli import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "soft_thinking", "soft.yaml")
QUESTIONS = [("1 + 1 =", "2"), ("2 + 3 =", "5"), ("Final answer: 7", "7"), ("9 - 4 =", "5"), ("a", "3")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    return str(path)


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


def test_output_path_errors_before_work(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        JsonlPredictionWriter(str(tmp_path))
    existing = tmp_path / "done.jsonl"
    existing.write_text("{}\n")
    with pytest.raises(ValueError, match="exists"):
        JsonlPredictionWriter(str(existing))


def test_unknown_config_key_is_an_error(model_dir, data_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(args("predict", model_dir, data_file, tmp_path / "x.jsonl", "--model.init_args.generation.mood", "soft"),
            run=False)
    assert "mood" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_merge_in_input_order(model_dir, data_file, tmp_path):
    out = tmp_path / "ddp.jsonl"
    cmd = [sys.executable, "-m", "softtok.cli", *args("predict", model_dir, data_file, out,
                                                      "--trainer.strategy", "ddp", "--trainer.devices", "2")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(out)
    assert [r["index"] for r in records] == list(range(len(QUESTIONS)))
    single = tmp_path / "single.jsonl"
    cli(args("predict", model_dir, data_file, single))
    assert [r["thinking"] for r in records] == [r["thinking"] for r in read_jsonl(single)]
