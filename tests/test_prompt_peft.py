"""PEFT oracles: same training losses as PEFT PromptTuning, identical logits across export and import."""

import json

import peft
import pytest
import torch
from tiny import tiny_model
from transformers import AutoModelForCausalLM, LlamaConfig

from softtok.prompts import (
    IAPTConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    export_peft,
    greedy_generate,
    load_peft_adapter,
)
from softtok.prompts.peft_io import CONFIG_NAME, WEIGHTS_NAME

TEXTS = ["hello 1+2", "7 + 8 = 15", "xyz", "a+b=c"]


def right_padded(tokenizer, texts):
    tokenizer.padding_side = "right"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = "left"
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    labels[:, :3] = -100  # loss on the tail only, like an answer
    return enc.input_ids, enc.attention_mask, labels


def perturb(prompt, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prompt.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen) * (p.detach().pow(2).mean().sqrt() + 0.1))


def assert_real_close(a, b, mask):
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


def test_training_losses_match_peft(arch, tokenizer):
    """Same seed-driven init, data and AdamW: softtok and PEFT PromptTuning give the same 5 losses (1e-5 rel)."""
    n = 4
    torch.manual_seed(0)
    ours = PromptTuningConfig(n_virtual=n, init="sample_vocab").build(tiny_model(arch), tokenizer)
    torch.manual_seed(0)
    theirs = peft.get_peft_model(tiny_model(arch), peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=n, prompt_tuning_init="SAMPLE_VOCAB"))
    peft_weight = theirs.prompt_encoder["default"].embedding.weight
    assert torch.equal(ours.prompt_embeddings, peft_weight), "same seed should sample the same vocabulary rows"
    model = tiny_model(arch)
    model.requires_grad_(False)
    theirs.eval()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=0.05)
    opt_theirs = torch.optim.AdamW([peft_weight], lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        texts = [TEXTS[i] for i in torch.randperm(len(TEXTS), generator=gen)[:3].tolist()]
        ids, mask, labels = right_padded(tokenizer, texts)
        loss_ours = ours.loss(model, ids, mask, labels)
        loss_theirs = theirs(input_ids=ids, attention_mask=mask, labels=labels).loss
        rel = abs(loss_ours.item() - loss_theirs.item()) / abs(loss_theirs.item())
        assert rel < 1e-5, f"step {step}: softtok {loss_ours.item()} vs PEFT {loss_theirs.item()}"
        for opt, loss in ((opt_ours, loss_ours), (opt_theirs, loss_theirs)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.testing.assert_close(ours.prompt_embeddings, peft_weight, atol=1e-5, rtol=1e-4)


def test_export_prompt_tuning_loads_in_peft(arch, tokenizer, tmp_path):
    model = tiny_model(arch)
    prompt = PromptTuningConfig(n_virtual=5, init="sample_vocab").build(model, tokenizer)
    perturb(prompt)
    export_peft(prompt, tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {CONFIG_NAME, WEIGHTS_NAME}
    loaded = peft.PeftModel.from_pretrained(tiny_model(arch), str(tmp_path / "adapter"))
    ids, mask, _ = right_padded(tokenizer, TEXTS)
    with torch.no_grad():
        theirs = loaded(input_ids=ids, attention_mask=mask).logits[:, prompt.n_virtual:]
        ours = prompt.logits(model, ids, mask)
    assert_real_close(ours, theirs, mask)


@pytest.mark.parametrize("projection", [0, 8])
def test_export_prefix_loads_in_peft(arch, tokenizer, tmp_path, projection):
    """Prefix tuning exports too, the MLP reparameterisation folded away."""
    model = tiny_model(arch)
    prompt = PrefixTuningConfig(n_virtual=4, init="sample_vocab", projection_hidden=projection).build(
        model, tokenizer)
    perturb(prompt)
    export_peft(prompt, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(tiny_model(arch), str(tmp_path / "adapter"))
    ids, mask, _ = right_padded(tokenizer, TEXTS)
    with torch.no_grad():
        assert_real_close(prompt.logits(model, ids, mask), loaded(input_ids=ids, attention_mask=mask).logits, mask)


def test_import_peft_prompt_tuning(arch, tokenizer, tmp_path):
    torch.manual_seed(0)
    theirs = peft.get_peft_model(tiny_model(arch), peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=6, prompt_tuning_init="SAMPLE_VOCAB"))
    theirs.save_pretrained(str(tmp_path / "peft"))
    model = tiny_model(arch)
    prompt = load_peft_adapter(tmp_path / "peft", model)
    assert prompt.method == "prompt_tuning" and prompt.n_virtual == 6
    ids, mask, _ = right_padded(tokenizer, TEXTS)
    theirs.eval()
    with torch.no_grad():
        assert_real_close(prompt.logits(model, ids, mask), theirs(input_ids=ids, attention_mask=mask).logits[:, 6:],
                          mask)


@pytest.mark.parametrize("projection", [False, True])
def test_import_peft_prefix_tuning(arch, tokenizer, tmp_path, projection):
    torch.manual_seed(0)
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=projection,
                                     encoder_hidden_size=8)
    theirs = peft.get_peft_model(tiny_model(arch), config)
    with torch.no_grad():  # PEFT's unit-normal init is huge for keys; tame it so logits are well-conditioned
        for p in theirs.prompt_encoder.parameters():
            p.mul_(0.3)
    theirs.save_pretrained(str(tmp_path / "peft"))
    reloaded = peft.PeftModel.from_pretrained(tiny_model(arch), str(tmp_path / "peft")).eval()
    model = tiny_model(arch)
    prompt = load_peft_adapter(tmp_path / "peft", model)
    assert prompt.method == "prefix_tuning" and set(prompt.state_dict()) == {"prefix"}
    ids, mask, _ = right_padded(tokenizer, TEXTS)
    with torch.no_grad():
        assert_real_close(prompt.logits(model, ids, mask), reloaded(input_ids=ids, attention_mask=mask).logits, mask)


def test_generation_matches_peft_forward(arch, tokenizer, tmp_path):
    """Greedy decoding with an imported PEFT prompt == PEFT's forward pass recomputed at every step.

    (PEFT's own ``generate`` is not the oracle: with transformers 5.x it departs from PEFT's
    forward after the first generated token.)
    """
    torch.manual_seed(0)
    theirs = peft.get_peft_model(tiny_model(arch), peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, prompt_tuning_init="SAMPLE_VOCAB")).eval()
    theirs.save_pretrained(str(tmp_path / "peft"))
    model = tiny_model(arch)
    prompt = load_peft_adapter(tmp_path / "peft", model)
    enc = tokenizer(["hello 1+2"], return_tensors="pt", add_special_tokens=False)
    ids, mask, expected = enc.input_ids, enc.attention_mask, []
    with torch.no_grad():
        for _ in range(8):
            token = theirs(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1)
            expected.append(token.item())
            ids, mask = torch.cat([ids, token[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    assert greedy_generate(model, enc.input_ids, enc.attention_mask, prefill=prompt, max_new_tokens=8) == [expected]


# ------------------------------------------------------------------ bad input
def test_export_never_overwrites_silently(tokenizer, tmp_path):
    model = tiny_model("llama")
    prompt = PromptTuningConfig(n_virtual=2, init="sample_vocab").build(model, tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_peft(prompt, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    export_peft(prompt, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me" and (out / WEIGHTS_NAME).is_file()
    with pytest.raises(ValueError, match="no PEFT equivalent"):
        export_peft(IAPTConfig(n_virtual=2, init="sample_vocab").build(model, tokenizer), tmp_path / "iapt")
    assert not (tmp_path / "iapt").exists()


def test_import_refuses_mismatches(tokenizer, tmp_path):
    model = tiny_model("llama")
    prompt = PromptTuningConfig(n_virtual=2, init="sample_vocab").build(model, tokenizer)
    export_peft(prompt, tmp_path / "a", base_model_name_or_path="org/tiny-llama")
    narrow = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=90, hidden_size=32, intermediate_size=64,
                                                          num_hidden_layers=2, num_attention_heads=4))
    with pytest.raises(ValueError, match="hidden size"):
        load_peft_adapter(tmp_path / "a", narrow)
    other = tiny_model("llama")
    other.config._name_or_path = "org/other-model"
    with pytest.raises(ValueError, match="base model"):
        load_peft_adapter(tmp_path / "a", other)
    assert load_peft_adapter(tmp_path / "a", other, check_base_model=False).n_virtual == 2
    prefix = PrefixTuningConfig(n_virtual=2, init="sample_vocab").build(model, tokenizer)
    export_peft(prefix, tmp_path / "p")
    with pytest.raises(ValueError, match="prefix shape"):
        load_peft_adapter(tmp_path / "p", tiny_model("gpt2"))
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    (tmp_path / "a" / CONFIG_NAME).write_text(json.dumps({**config, "peft_type": "LORA"}))
    with pytest.raises(ValueError, match="PROMPT_TUNING"):
        load_peft_adapter(tmp_path / "a", model)
    with pytest.raises(FileNotFoundError, match="adapter_config"):
        load_peft_adapter(tmp_path / "missing", model)


@pytest.mark.slow
def test_embedded_model_roundtrip(tmp_path):
    """On SmolLM2-135M-Instruct: export -> PEFT load and PEFT save -> import give identical logits."""
    from softtok.models import load_model

    model, tokenizer = load_model()
    prompt = PromptTuningConfig(n_virtual=8, init_text="Answer with the number only.").build(model, tokenizer)
    perturb(prompt)
    export_peft(prompt, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m" and config["token_dim"] == 576
    enc = tokenizer(["What is 12 + 7?", "Compute 3 * 4 - 2 please."], return_tensors="pt", padding=True,
                    padding_side="right")
    with torch.no_grad():
        ours = prompt.logits(model, enc.input_ids, enc.attention_mask)
        wrapped = peft.PeftModel.from_pretrained(model, str(tmp_path / "adapter"))
        theirs = wrapped(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, 8:]
        assert_real_close(ours, theirs, enc.attention_mask)
        wrapped.save_pretrained(str(tmp_path / "resaved"))
        back = load_peft_adapter(tmp_path / "resaved", model)
        assert_real_close(back.logits(model, enc.input_ids, enc.attention_mask), theirs, enc.attention_mask)


def _edit(folder, config_update=None, weights=None):
    from safetensors.torch import save_file

    if config_update is not None:
        config = json.loads((folder / CONFIG_NAME).read_text())
        (folder / CONFIG_NAME).write_text(json.dumps({**config, **config_update}))
    if weights is not None:
        save_file({"prompt_embeddings": weights}, str(folder / WEIGHTS_NAME))


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_import_names_what_disagrees(method, tokenizer, tmp_path):
    """num_virtual_tokens 7 against 5 weight rows (the issue's input) is reported as exactly that, not as a
    hidden-size mismatch; so are a width that disagrees with the config and a missing config entry."""
    model = tiny_model("llama")
    config_cls = PromptTuningConfig if method == "prompt_tuning" else PrefixTuningConfig
    export_peft(config_cls(n_virtual=5, init="sample_vocab").build(model, tokenizer), tmp_path / "a")
    _edit(tmp_path / "a", {"num_virtual_tokens": 7})
    with pytest.raises(ValueError, match="num_virtual_tokens=7 but prompt_embeddings has 5 rows") as err:
        load_peft_adapter(tmp_path / "a", model)
    assert "hidden size" not in str(err.value)
    _edit(tmp_path / "a", {"num_virtual_tokens": 5}, weights=torch.zeros(5, 7))
    with pytest.raises(ValueError, match="prompt_embeddings is 7 wide"):
        load_peft_adapter(tmp_path / "a", model)
    _edit(tmp_path / "a", {"num_virtual_tokens": None})
    with pytest.raises(ValueError, match="num_virtual_tokens=None; it must be an integer >= 1"):
        load_peft_adapter(tmp_path / "a", model)


def test_import_refuses_malformed_adapters(tokenizer, tmp_path):
    """Bad JSON, a list instead of settings, non-integer entries and non-finite weights: clear errors."""
    model = tiny_model("llama")
    folder = tmp_path / "a"
    export_peft(PromptTuningConfig(n_virtual=5, init="sample_vocab").build(model, tokenizer), folder)
    good = (folder / CONFIG_NAME).read_text()
    for text, match in [("{not json", "is not valid JSON"), ("[1, 2]", "holds a list, not a JSON object")]:
        (folder / CONFIG_NAME).write_text(text)
        with pytest.raises(ValueError, match=match):
            load_peft_adapter(folder, model)
    (folder / CONFIG_NAME).write_text(good)
    for update, match in [({"token_dim": "64"}, "token_dim='64'; it must be an integer"),
                          ({"token_dim": 0}, "token_dim=0; it must be an integer"),
                          ({"num_transformer_submodules": "two"}, "num_transformer_submodules='two'")]:
        _edit(folder, update)
        with pytest.raises(ValueError, match=match):
            load_peft_adapter(folder, model)
        (folder / CONFIG_NAME).write_text(good)
    _edit(folder, weights=torch.full((5, 64), float("nan")))
    with pytest.raises(ValueError, match="320 non-finite values"):
        load_peft_adapter(folder, model)
