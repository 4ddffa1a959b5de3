"""JsonlPredictionWriter: a rerun never destroys earlier work; it resumes only a run with the same settings."""

import json
import os

import pytest
from tiny import QUESTIONS

from softtok.callbacks import JsonlPredictionWriter, read_jsonl, settings_changes
from softtok.cli import cli
from softtok.generation import SoftThinkingGenerator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "soft_thinking", "soft.yaml")  # resume: true, overwrite: false
REAL_GENERATE = SoftThinkingGenerator.generate



def predict(model_dir, data_file, output, *extra):
    """``softtok predict`` of the soft recipe on the tiny model: 5 problems in batches of 2 (3 batches)."""
    return cli([
        "predict", "-c", RECIPE,
        "--model.init_args.model", model_dir,
        "--model.init_args.generation.max_think_tokens", "12",
        "--model.init_args.generation.max_answer_tokens", "4",
        "--data.init_args.path", data_file, "--data.init_args.task_config", "null",
        "--data.init_args.batch_size", "2",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks.init_args.output_path", str(output),
        *extra,
    ])


class Crash(RuntimeError):
    pass


class Spy:
    """What the generator was asked for; it raises ``Crash`` once ``crash_after`` batches are done."""

    def __init__(self) -> None:
        self.calls, self.prompts, self.crash_after, self.forbid = 0, [], None, False

    def reset(self) -> None:
        self.calls, self.prompts, self.crash_after = 0, [], None


@pytest.fixture
def generated(monkeypatch):
    spy = Spy()

    def generate(self, prompts, *args, **kwargs):
        assert not spy.forbid, "the generator ran although the run should have been refused"
        if spy.crash_after is not None and spy.calls >= spy.crash_after:
            raise Crash("simulated crash mid-predict")
        spy.calls += 1
        spy.prompts += list(prompts)
        return REAL_GENERATE(self, prompts, *args, **kwargs)

    monkeypatch.setattr(SoftThinkingGenerator, "generate", generate)
    return spy


def strip(records):
    """Records without the wall-clock field (the only one that differs between runs of the deterministic recipe)."""
    return [{k: v for k, v in r.items() if k != "batch_seconds"} for r in records]


def crash_after_two_batches(model_dir, data_file, out, generated):
    """Run until the third batch raises: 4 records in the journal, no output."""
    generated.reset()
    generated.crash_after = 2
    with pytest.raises(Crash):
        predict(model_dir, data_file, out)
    generated.reset()
    journal = out.with_name(out.name + ".rank0.partial")
    assert not out.exists() and len(read_jsonl(journal)) == 4
    return journal


def test_crash_then_rerun_resumes_and_generates_only_the_missing(model_dir, data_file, tmp_path, generated):
    reference = tmp_path / "reference.jsonl"
    predict(model_dir, data_file, reference)
    assert generated.calls == 3
    out = tmp_path / "pred.jsonl"
    journal = crash_after_two_batches(model_dir, data_file, out, generated)
    with open(journal, "a") as f:  # the crash also cut a line in half
        f.write('{"index": 4, "sam')

    predict(model_dir, data_file, out)  # the same command again: the recipe's resume: true continues it

    assert generated.calls == 1 and len(generated.prompts) == 1 and "user: a\n" in generated.prompts[0]
    assert strip(read_jsonl(out)) == strip(read_jsonl(reference))
    assert not list(tmp_path.glob("pred.jsonl.rank*.partial"))
    recorded = json.loads((tmp_path / "pred.jsonl.settings.json").read_text())["settings"]["model"]["model"]
    assert recorded["folder"] == os.path.basename(model_dir) and "model.safetensors" in recorded


def test_resume_tells_retrained_weights_in_the_same_folder_from_a_copy(data_file, tmp_path, generated):
    """The model is identified by its weights, not its path: retrained weights saved into the same folder
    are another model (refused), the same weights in a copied folder are the same (resumed)."""
    import shutil

    from tiny import tiny_model, tiny_tokenizer

    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    out = tmp_path / "pred.jsonl"
    journal = crash_after_two_batches(str(folder), data_file, out, generated)
    copy = tmp_path / "elsewhere" / "tiny-llama"
    shutil.copytree(folder, copy)
    tiny_model("llama", seed=1).save_pretrained(folder)  # "retrained" in place
    generated.forbid = True
    with pytest.raises(ValueError, match=r"other settings.*model\.model\.model\.safetensors"):
        predict(str(folder), data_file, out)
    assert len(read_jsonl(journal)) == 4
    generated.forbid = False
    predict(str(copy), data_file, out)
    assert generated.calls == 1 and len(read_jsonl(out)) == 5


def test_rerun_of_a_finished_run_keeps_it_and_generates_nothing(model_dir, data_file, tmp_path, generated):
    out = tmp_path / "pred.jsonl"
    predict(model_dir, data_file, out)
    before = out.read_bytes()
    generated.forbid = True
    predict(model_dir, data_file, out, "--data.init_args.batch_size", "4")  # batch size is not a record setting
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--model.init_args.generation.max_think_tokens", "8"], "model.generation.max_think_tokens: 12 -> 8"),
        (["--data.init_args.n_samples", "2"], "data.n_samples: 1 -> 2"),
        (["--model.init_args.system_prompt", "null"], "model.system_prompt:"),
        (["--seed_everything", "8"], 'seed_everything: "7" -> "8"'),
    ],
)
def test_resume_refuses_other_settings_and_keeps_the_journal(model_dir, data_file, tmp_path, generated, change, named):
    out = tmp_path / "pred.jsonl"
    journal = crash_after_two_batches(model_dir, data_file, out, generated)
    kept = journal.read_bytes()
    generated.forbid = True
    with pytest.raises(ValueError, match="other settings") as err:
        predict(model_dir, data_file, out, *change)
    assert named in str(err.value) and "overwrite=true" in str(err.value) and "output_path" in str(err.value)
    assert journal.read_bytes() == kept and not out.exists()


def test_resume_refuses_a_finished_output_of_a_changed_data_file(model_dir, data_file, tmp_path, generated):
    out = tmp_path / "pred.jsonl"
    predict(model_dir, data_file, out)
    before = out.read_bytes()
    with open(data_file, "a") as f:
        f.write(json.dumps({"question": "4 + 4 =", "answer": "8"}) + "\n")
    generated.forbid = True
    with pytest.raises(ValueError, match="data.file_sha256"):
        predict(model_dir, data_file, out)
    assert out.read_bytes() == before


def test_without_resume_or_overwrite_earlier_work_is_refused(model_dir, data_file, tmp_path, generated):
    out = tmp_path / "pred.jsonl"
    journal = crash_after_two_batches(model_dir, data_file, out, generated)
    kept = journal.read_bytes()
    generated.forbid = True
    with pytest.raises(ValueError, match="already holds predictions") as err:
        predict(model_dir, data_file, out, "--trainer.callbacks.init_args.resume", "false")
    assert "resume=true" in str(err.value) and "overwrite=true" in str(err.value)
    assert journal.read_bytes() == kept


def test_resume_refuses_predictions_without_a_settings_record(model_dir, data_file, tmp_path, generated):
    out = tmp_path / "pred.jsonl"
    predict(model_dir, data_file, out)
    (tmp_path / "pred.jsonl.settings.json").unlink()  # e.g. written by an older softtok
    generated.forbid = True
    with pytest.raises(ValueError, match="no readable settings record"):
        predict(model_dir, data_file, out)


def test_overwrite_discards_earlier_work_explicitly(model_dir, data_file, tmp_path, generated):
    reference = tmp_path / "reference.jsonl"
    predict(model_dir, data_file, reference, "--model.init_args.generation.max_think_tokens", "8")
    out = tmp_path / "pred.jsonl"
    crash_after_two_batches(model_dir, data_file, out, generated)
    # Other settings and overwrite=true (it wins over the recipe's resume: true): everything is generated again.
    predict(model_dir, data_file, out, "--model.init_args.generation.max_think_tokens", "8",
            "--trainer.callbacks.init_args.overwrite", "true")
    assert generated.calls == 3 and len(generated.prompts) == len(QUESTIONS)
    assert strip(read_jsonl(out)) == strip(read_jsonl(reference))
    assert not list(tmp_path.glob("pred.jsonl.rank*.partial"))
    settings = json.loads((tmp_path / "pred.jsonl.settings.json").read_text())["settings"]
    assert settings["model"]["generation"]["max_think_tokens"] == 8


def test_overwrite_discards_nothing_when_the_run_fails_its_checks(model_dir, data_file, tmp_path, generated):
    out = tmp_path / "pred.jsonl"
    predict(model_dir, data_file, out)
    before = out.read_bytes(), (tmp_path / "pred.jsonl.settings.json").read_bytes()
    generated.forbid = True
    with pytest.raises(ValueError, match="think_end="):  # checked after the writer's decision, before any change
        predict(model_dir, data_file, out, "--trainer.callbacks.init_args.overwrite", "true",
                "--model.init_args.generation.think_end", "[[stop]]")
    assert (out.read_bytes(), (tmp_path / "pred.jsonl.settings.json").read_bytes()) == before


def test_empty_journals_are_not_work_worth_keeping(model_dir, data_file, tmp_path, generated):
    """A crash before the first batch leaves empty journals: a rerun with other settings just starts."""
    out = tmp_path / "pred.jsonl"
    generated.crash_after = 0
    with pytest.raises(Crash):
        predict(model_dir, data_file, out)
    assert (tmp_path / "pred.jsonl.rank0.partial").stat().st_size == 0
    generated.crash_after = None
    predict(model_dir, data_file, out, "--model.init_args.generation.max_think_tokens", "8")
    assert len(read_jsonl(out)) == len(QUESTIONS)


def test_output_path_errors_at_construction(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        JsonlPredictionWriter(str(tmp_path))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="which is a file, not a directory"):
        JsonlPredictionWriter(str(a_file / "sub" / "pred.jsonl"))
    JsonlPredictionWriter(str(tmp_path / "new" / "dir" / "pred.jsonl"))  # missing folders are created later


def test_settings_changes_names_each_dotted_key():
    old = {"model": {"generation": {"top_k": 30, "stop": ["\n"]}, "dtype": "torch.float32"}, "data": None}
    new = {"model": {"generation": {"top_k": 20, "stop": ["\n"]}}, "data": {"size": 5}}
    assert settings_changes(old, new) == [
        "data: null -> (absent)", "data.size: (absent) -> 5",
        'model.dtype: "torch.float32" -> (absent)', "model.generation.top_k: 30 -> 20",
    ]
    assert settings_changes(old, old) == []
