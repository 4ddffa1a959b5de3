"""Soft-prompt core: injection layout, init, generation with the KV cache, gradients, bad input."""

import pytest
import torch
from tiny import tiny_model

from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.prompts import (
    IAPTConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    RationalActivation,
    config_from_dict,
    config_to_class_path,
    greedy_generate,
    mark_only_prompt_trainable,
)

INIT_TEXT = "abc12"
TEXTS = ["hello 1+2", "x", "7 + 8 = 15"]  # different lengths: padding matters
METHODS = {
    "prompt_tuning": lambda **kw: PromptTuningConfig(**{"n_virtual": 5, "init_text": INIT_TEXT, **kw}),
    "prefix_tuning": lambda **kw: PrefixTuningConfig(**{"n_virtual": 5, "init_text": INIT_TEXT, **kw}),
    "prefix_mlp": lambda **kw: PrefixTuningConfig(**{"n_virtual": 5, "init_text": INIT_TEXT, "projection_hidden": 8,
                                                    **kw}),
    "iapt": lambda **kw: IAPTConfig(**{"n_virtual": 5, "init_text": INIT_TEXT, "bottleneck": 8, **kw}),
    "iapt_shallow": lambda **kw: IAPTConfig(**{"n_virtual": 3, "init_text": "ab1", "deep": False,
                                               "activation": "gelu", **kw}),
}


def batch(tokenizer, texts, side="left"):
    tokenizer.padding_side = side
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = "left"
    return enc.input_ids, enc.attention_mask


def perturb(prompt, seed=0, scale=0.5):
    """Move every prompt weight away from its init (the IAPT up-projection starts at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prompt.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * (p.detach().float().pow(2).mean().sqrt() + 0.1))


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "iapt"])
def test_text_init_equals_hard_prompt(arch, method, tokenizer):
    """At init (text), every method computes exactly what prepending the init text as tokens computes."""
    model = tiny_model(arch)
    prompt = METHODS[method]().build(model, tokenizer)
    ids, mask = batch(tokenizer, TEXTS[:1])
    text_ids = torch.tensor([tokenizer(INIT_TEXT, add_special_tokens=False).input_ids])
    expected = model(torch.cat([text_ids, ids], 1)).logits[:, text_ids.shape[1]:]
    torch.testing.assert_close(prompt.logits(model, ids, mask), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(arch, method, side, tokenizer):
    """A padded row gives the logits of the same row alone: virtual tokens go after the padding."""
    model = tiny_model(arch)
    prompt = METHODS[method]().build(model, tokenizer)
    perturb(prompt)
    ids, mask = batch(tokenizer, TEXTS, side)
    logits = prompt.logits(model, ids, mask)
    for i, text in enumerate(TEXTS):
        one_ids, one_mask = batch(tokenizer, [text])
        alone = prompt.logits(model, one_ids, one_mask)[0]
        real = mask[i].bool()
        torch.testing.assert_close(logits[i][real], alone, atol=2e-5, rtol=1e-4)


def greedy_no_cache(model, prompt, ids, mask, steps):
    """Reference decoding: recompute the whole prompted sequence every step (no KV cache)."""
    instruction = mask.clone()  # generated tokens are not part of the instruction
    out = []
    for _ in range(steps):
        logits = prompt.logits(model, ids, mask, instruction_mask=instruction)[:, -1]
        token = logits.argmax(-1)
        out.append(token)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        instruction = torch.cat([instruction, torch.zeros_like(instruction[:, :1])], 1)
    return torch.stack(out, 1).tolist()


@pytest.mark.parametrize("method", list(METHODS))
def test_cached_generation_equals_recompute(arch, method, tokenizer):
    """Prompt injected at prefill + KV cache == recomputing the full sequence each step."""
    model = tiny_model(arch)
    prompt = METHODS[method]().build(model, tokenizer)
    perturb(prompt)
    ids, mask = batch(tokenizer, TEXTS)
    with torch.no_grad():
        expected = greedy_no_cache(model, prompt, ids, mask, 10)
        got = greedy_generate(model, ids, mask, prefill=prompt, max_new_tokens=10)
    assert got == expected


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "iapt"])
def test_composes_with_soft_thinking_generator(method, tokenizer):
    """A tuned prompt is a prefill builder: discrete greedy Soft Thinking with it == greedy_generate."""
    model = tiny_model("qwen2")
    prompt = METHODS[method]().build(model, tokenizer)
    perturb(prompt)
    ids, mask = batch(tokenizer, TEXTS)
    expected = greedy_generate(model, ids, mask, prefill=prompt, max_new_tokens=8, eos_token_ids=[1])
    think_end = tokenizer.convert_tokens_to_ids("</think>")
    greedy = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, max_think_tokens=8, max_answer_tokens=0,
                  think_end="</think>")
    # Discrete greedy, and SwiReasoning kept explicit (its greedy explicit steps), both equal greedy decoding.
    for cfg in (GenerationConfig(mode="discrete", **greedy),
                GenerationConfig(mode="swir", start_mode="explicit", switching=False, **greedy)):
        results = SoftThinkingGenerator(model, tokenizer, cfg).generate(TEXTS, prefill=prompt)
        for res, exp in zip(results, expected, strict=True):
            exp = exp[: exp.index(think_end) + 1] if think_end in exp else exp
            assert res.think_ids == exp
    # ...and the mixing modes run with a prompt too.
    for mode in ("soft", "multiplex", "swir"):
        soft = SoftThinkingGenerator(model, tokenizer, GenerationConfig(mode=mode, max_think_tokens=6,
                                                                        max_answer_tokens=3, window_size=2))
        assert len(soft.generate(TEXTS, prefill=prompt)) == len(TEXTS)


def test_iapt_prompt_depends_on_instruction_not_answer(tokenizer):
    """IAPT pools the instruction only: logits before the answer never depend on answer tokens."""
    model = tiny_model("llama")
    prompt = METHODS["iapt"]().build(model, tokenizer)
    perturb(prompt)
    ids_a, mask = batch(tokenizer, ["3+4=7"])
    ids_b, _ = batch(tokenizer, ["3+4=9"])
    labels = ids_a.clone()
    labels[:, :4] = -100  # "3+4=" is the instruction, the answer digit is labelled
    instr = (labels == -100) & mask.bool()
    la = prompt.logits(model, ids_a, mask, instruction_mask=instr)
    lb = prompt.logits(model, ids_b, mask, instruction_mask=instr)
    torch.testing.assert_close(la[:, :4], lb[:, :4])
    # ...while a different instruction changes the generated prompt (instance-aware).
    ids_c, _ = batch(tokenizer, ["5+1=7"])
    plain = METHODS["prompt_tuning"]().build(model, tokenizer)
    delta_a = la[:, 4] - plain.logits(model, ids_a, mask)[:, 4]
    delta_c = prompt.logits(model, ids_c, mask, instruction_mask=instr)[:, 4] - plain.logits(model, ids_c, mask)[:, 4]
    assert not torch.allclose(delta_a, delta_c, atol=1e-4)


@pytest.mark.parametrize("method", list(METHODS))
def test_only_prompt_trains(method, tokenizer):
    """Only prompt parameters get gradients; the base model is bit-identical after training."""
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = METHODS[method]().build(model, tokenizer)
    mark_only_prompt_trainable(model, prompt)
    assert all(k.split(".")[0] not in ("model", "lm_head") for k in prompt.state_dict())
    ids, mask = batch(tokenizer, TEXTS, "right")
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    opt = torch.optim.AdamW(prompt.parameters(), lr=0.1)
    start = {k: v.clone() for k, v in prompt.state_dict().items()}
    for _ in range(3):
        opt.zero_grad()
        loss = prompt.loss(model, ids, mask, labels)
        loss.backward()
        assert all(p.grad is None for p in model.parameters())
        opt.step()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    changed = [k for k, v in prompt.state_dict().items() if not torch.equal(v, start[k])]
    assert changed, "no prompt weight moved"


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "iapt"])
def test_loss_equals_hf_loss(method, tokenizer):
    """The labelled-positions-only loss equals HF's loss on the full logits of the injected batch."""
    model = tiny_model("gemma")
    prompt = METHODS[method]().build(model, tokenizer)
    perturb(prompt)
    ids, mask = batch(tokenizer, TEXTS, "left")
    labels = ids.masked_fill(mask == 0, -100)
    injected = prompt.inject(model, ids, mask, labels=labels)
    hf = prompt.model_forward(model, injected, labels=injected.labels).loss
    torch.testing.assert_close(prompt.loss(model, ids, mask, labels), hf, rtol=1e-5, atol=1e-6)


def test_prefix_fold_is_exact(tokenizer):
    """Folding the MLP reparameterisation keeps the logits."""
    model = tiny_model("qwen2")
    prompt = METHODS["prefix_mlp"]().build(model, tokenizer)
    folded = prompt.folded()
    assert set(folded.state_dict()) == {"prefix"}
    ids, mask = batch(tokenizer, TEXTS)
    torch.testing.assert_close(folded.logits(model, ids, mask), prompt.logits(model, ids, mask))


def test_dtype_cast_keeps_fp32_storage(tokenizer):
    model = tiny_model("llama").to(torch.bfloat16)
    prompt = PromptTuningConfig(n_virtual=3, init="sample_vocab").build(model, tokenizer)
    assert prompt.prompt_embeddings.dtype == torch.float32
    ids, mask = batch(tokenizer, TEXTS)
    pre = prompt(model, ids, mask)
    assert pre.inputs_embeds.dtype == torch.bfloat16
    assert greedy_generate(model, ids, mask, prefill=prompt, max_new_tokens=2)


def test_inits(tokenizer):
    model = tiny_model("llama")
    emb = model.get_input_embeddings()
    ids = tokenizer("ab", add_special_tokens=False).input_ids
    p = PromptTuningConfig(n_virtual=5, init_text="ab").build(model, tokenizer)  # repeated to length
    torch.testing.assert_close(p.prompt_embeddings, emb(torch.tensor((ids * 3)[:5])))
    p = PromptTuningConfig(n_virtual=2, init_text="abcd", truncate_init_text=True).build(model, tokenizer)
    torch.testing.assert_close(p.prompt_embeddings, emb(torch.tensor(ids)))
    torch.manual_seed(3)
    p = PromptTuningConfig(n_virtual=4, init="random").build(model, tokenizer)
    rms = emb.weight.detach().pow(2).mean().sqrt()
    assert 0.5 < float(p.prompt_embeddings.detach().pow(2).mean().sqrt() / rms) < 2.0


def test_rational_activation_starts_near_gelu():
    x = torch.linspace(-4, 4, 101)
    assert (RationalActivation()(x) - torch.nn.functional.gelu(x)).abs().max() < 0.08


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make", [
    lambda: PromptTuningConfig(n_virtual=0),
    lambda: PromptTuningConfig(n_virtual=2.5),
    lambda: PromptTuningConfig(init="zeros"),
    lambda: PromptTuningConfig(init="text", init_text=""),
    lambda: PrefixTuningConfig(projection_hidden=-1),
    lambda: IAPTConfig(activation="swish"),
    lambda: IAPTConfig(bottleneck=0),
])
def test_bad_configs(make):
    with pytest.raises(ValueError, match="n_virtual|init|projection_hidden|activation|bottleneck"):
        make()


@pytest.mark.parametrize("config", [
    PromptTuningConfig(n_virtual=3, init="random"), PrefixTuningConfig(n_virtual=2, projection_hidden=4),
    IAPTConfig(n_virtual=2, bottleneck=4, deep=False, activation="gelu"),
], ids=["prompt_tuning", "prefix_tuning", "iapt"])
def test_config_dict_forms_round_trip(config):
    as_cli = config_to_class_path(config)
    assert "method" not in as_cli["init_args"]
    assert config_from_dict(as_cli) == config_from_dict(config.to_dict()) == config
    assert config_from_dict({**as_cli, "class_path": "softtok.prompts.config." + type(config).__name__}) == config
    with pytest.raises(ValueError, match="LoraConfig"):
        config_from_dict({"class_path": "peft.LoraConfig", "init_args": {}})


def test_long_init_text_needs_truncation_flag(tokenizer):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="truncate_init_text"):
        PromptTuningConfig(n_virtual=3, init_text="abcdef").build(model, tokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        PromptTuningConfig(n_virtual=3, init_text="abc").build(model, None)


def test_prompt_refuses_other_model(tokenizer):
    prompt = PromptTuningConfig(n_virtual=3, init="sample_vocab").build(tiny_model("llama"), tokenizer)
    ids, mask = batch(tokenizer, TEXTS)
    with pytest.raises(ValueError, match="num_kv_heads"):
        prompt.logits(tiny_model("gpt2"), ids, mask)


def test_state_dict_is_prompt_only(arch, tokenizer):
    model = tiny_model(arch)
    keys = {m: set(METHODS[m]().build(model, tokenizer).state_dict()) for m in METHODS}
    assert keys["prompt_tuning"] == {"prompt_embeddings"}
    assert keys["prefix_tuning"] == {"prefix"}
    assert keys["prefix_mlp"] == {"embedding", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}
    assert all(k == "prompt_embeddings" or k.startswith("generators.") for k in keys["iapt"])


@pytest.mark.parametrize("method", ["prefix_tuning", "prefix_mlp", "prompt_tuning", "iapt"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(arch, method, tokenizer):
    """Training under gradient checkpointing: the prefix keys survive the layers' cache drop (the issue's
    crash, "size of tensor a (5) must match ... (9)"), loss and gradients equal those without it, and the
    layers really are checkpointed."""
    from softtok.prompts._arch import decoder_layers

    model = tiny_model(arch)
    prompt = METHODS[method]().build(model, tokenizer)
    perturb(prompt)
    ids, mask = batch(tokenizer, TEXTS, "right")
    labels = ids.masked_fill(mask == 0, -100)
    model.train()
    results, calls = [], []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
            for layer in decoder_layers(model):
                inner = layer._gradient_checkpointing_func
                layer._gradient_checkpointing_func = lambda *a, _f=inner, _c=calls, **k: _c.append(1) or _f(*a, **k)
        prompt.zero_grad()
        torch.manual_seed(0)  # GPT-2's dropout: the same masks in both runs
        loss = prompt.loss(model, ids, mask, labels)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in prompt.named_parameters()}))
    assert len(calls) == len(decoder_layers(model))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, msg=name)
    # The model's own flags are back as they were: generation afterwards still fills a normal cache.
    assert model.is_activation_checkpointing
    assert not any("_can_checkpoint_with_cache" in vars(layer) for layer in decoder_layers(model))
    model.eval()
    with torch.no_grad():
        assert greedy_generate(model, ids, mask, prefill=prompt, max_new_tokens=3)


def test_prefix_refuses_checkpointing_layers_it_cannot_keep_the_cache_in(tokenizer, monkeypatch):
    """A model whose decoder layers do not checkpoint themselves: a clear error before any forward pass."""
    from softtok.prompts import prefix as prefix_module

    model = tiny_model("llama")
    prompt = METHODS["prefix_tuning"]().build(model, tokenizer)
    model.gradient_checkpointing_enable()  # the call (a deprecated alias in transformers 5)
    model.train()
    monkeypatch.setattr(prefix_module, "GradientCheckpointingLayer", type("Other", (), {}))
    ids, mask = batch(tokenizer, TEXTS, "right")
    with pytest.raises(ValueError, match="checkpoint themselves.*gradient_checkpointing_disable"):
        prompt.loss(model, ids, mask, ids.masked_fill(mask == 0, -100))
