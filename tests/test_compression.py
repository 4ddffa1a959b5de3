"""CompLLM-style context compression on tiny models: oracles, isolation of the LoRA, cache, files, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from tiny import tiny_model

from softtok.compression import (
    CompressionConfig,
    SegmentCache,
    SegmentCompressor,
    compressed_length,
    distillation_loss,
    splice_context,
    truncate_context,
)
from softtok.data.long_context import LongContextQADataModule, answer_correct, make_record
from softtok.generation.prefill import plain_prefill, prefill_logits
from softtok.prompts.generate import greedy_generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two left-padded rows with a context span each (one row has padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (2, 34), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    ctx = torch.zeros_like(ids)
    ctx[0, 3:28] = 1
    ctx[1, 7:24] = 1
    return ids, mask, ctx


def _randomise_lora(compressor: SegmentCompressor, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in compressor.named_parameters():
            if name.startswith("lora."):
                p.normal_(0, 0.3)
            else:
                p.normal_(0, 0.02)


def _qa_module(tokenizer, **kwargs):  # noqa: ANN001, ANN202
    opts = dict(train_size=4, val_size=2, test_size=2, n_people=2, distractors=2, batch_size=2, system_prompt=None)
    opts.update(kwargs)
    return LongContextQADataModule(tokenizer=tokenizer, **opts)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"segment_len": 21, "ratio": 2}, "segment_len=21 is not divisible by ratio=2"),
    ({"ratio": 0}, "ratio=0 must be an integer >= 1"),
    ({"segment_len": True}, "segment_len=True must be an integer"),
    ({"lora_r": 2.0}, "lora_r=2.0 must be an integer"),
    ({"residual": "sum"}, "residual='sum' is not allowed; allowed: mean, none"),
    ({"head_init": "random"}, "head_init='random' is not allowed"),
    ({"lora_dropout": 1.0}, "lora_dropout=1.0"),
    ({"target_modules": "q_proj"}, "target_modules='q_proj'"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CompressionConfig(**kwargs)


def test_config_round_trip_and_unknown_keys():
    config = CompressionConfig(segment_len=12, ratio=4, target_modules=["q_proj"], residual="none")
    assert CompressionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown compression config keys \\['segment'\\]"):
        CompressionConfig.from_dict({"segment": 3})
    assert compressed_length(45, CompressionConfig(segment_len=20, ratio=2)) == 10 + 10 + 3


# ----------------------------------------------------------------- oracles
def test_identity_compressor_reproduces_full_context(model):
    """ratio 1 + zero head + mean residual: CEs are the token embeddings, so logits and greedy text match."""
    compressor = SegmentCompressor(CompressionConfig(segment_len=6, ratio=1), model)
    ids, mask, ctx = _batch()
    with torch.no_grad():
        compressed = prefill_logits(model, compressor.prefill(ctx)(model, ids, mask))
        full = prefill_logits(model, plain_prefill(model, ids, mask))
    torch.testing.assert_close(compressed, full, atol=1e-5, rtol=0)
    plain = greedy_generate(model, ids, mask, max_new_tokens=6)
    assert greedy_generate(model, ids, mask, prefill=compressor.prefill(ctx), max_new_tokens=6) == plain


def test_kl_is_zero_at_identity_and_grads_reach_only_compressor(tokenizer):
    model = tiny_model("llama")
    data = _qa_module(tokenizer)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    identity = SegmentCompressor(CompressionConfig(segment_len=8, ratio=1), model)
    assert distillation_loss(identity, model, batch).item() == pytest.approx(0.0, abs=1e-6)

    model = tiny_model("llama")
    compressor = SegmentCompressor(CompressionConfig(segment_len=8, ratio=2, residual="none", head_init="identity"),
                                   model)
    _randomise_lora(compressor)
    loss = distillation_loss(compressor, model, batch)
    assert loss.item() > 0
    loss.backward()
    mine = {id(p) for p in compressor.parameters()}
    assert all(p.grad is not None for p in compressor.parameters())
    assert all(p.grad is None for p in model.parameters() if id(p) not in mine)
    assert all(not p.requires_grad for p in model.parameters() if id(p) not in mine)


def test_lora_is_disabled_outside_the_compressor(model):
    ids, mask, _ = _batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    compressor = SegmentCompressor(CompressionConfig(segment_len=6, ratio=2), model)
    _randomise_lora(compressor)
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
        with compressor.adapter(model):
            inside = model(input_ids=ids, attention_mask=mask).logits
        again = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    torch.testing.assert_close(again, before, atol=0, rtol=0)
    assert (inside - before).abs().max() > 1e-3
    assert {n.split(".")[0] for n, _ in compressor.named_parameters()} == {"lora", "head"}


def test_two_compressors_on_one_model_stay_independent():
    model = tiny_model("llama")
    first = SegmentCompressor(CompressionConfig(segment_len=6, ratio=2, head_init="identity"), model)
    _randomise_lora(first)
    with torch.no_grad():
        expected = first.compress(model, list(range(5, 20)))
    second = SegmentCompressor(CompressionConfig(segment_len=6, ratio=2, head_init="identity"), model)
    _randomise_lora(second, seed=1)
    assert first.adapter_name != second.adapter_name
    assert all(p.requires_grad for p in first.parameters()) and all(p.requires_grad for p in second.parameters())
    with torch.no_grad():
        torch.testing.assert_close(first.compress(model, list(range(5, 20))), expected, atol=0, rtol=0)
        assert (second.compress(model, list(range(5, 20))) - expected).abs().max() > 1e-3


def test_segments_alone_equal_batched(model):
    compressor = SegmentCompressor(CompressionConfig(segment_len=6, ratio=2, head_init="identity"), model)
    _randomise_lora(compressor)
    segments = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [20]]
    with torch.no_grad():
        batched = compressor.encode_segments(model, segments)
        alone = [compressor.encode_segments(model, [s])[0] for s in segments]
    assert [tuple(t.shape) for t in batched] == [(3, 64), (2, 64), (1, 64)]
    for b, a in zip(batched, alone, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_mean_residual_is_mean_pooling_when_untrained():
    model = tiny_model("llama")
    compressor = SegmentCompressor(CompressionConfig(segment_len=4, ratio=2), model)
    with torch.no_grad():
        ce = compressor.compress(model, [5, 6, 7, 8, 9])
        emb = model.get_input_embeddings()(torch.tensor([5, 6, 7, 8, 9]))
    expected = torch.stack([emb[0:2].mean(0), emb[2:4].mean(0), emb[4]])
    torch.testing.assert_close(ce, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------- cache
def test_cache_hits_stored_tensors_and_misses_changes():
    model = tiny_model("llama")
    compressor = SegmentCompressor(CompressionConfig(segment_len=4, ratio=2, head_init="identity"), model).eval()
    cache = SegmentCache(max_entries=3)
    context = list(range(5, 17))  # 3 segments
    with torch.no_grad():
        first = compressor.compress(model, context, cache=cache)
        assert (cache.hits, cache.misses, len(cache)) == (0, 3, 3)
        stored = compressor.encode_segments(model, [context[:4]], cache=cache)[0]
        assert cache.hits == 1 and any(stored is v for v in cache._store.values())
        torch.testing.assert_close(compressor.compress(model, context, cache=cache), first, atol=0, rtol=0)
        assert (cache.hits, cache.misses) == (4, 3)
        changed = context[:4] + [30] + context[5:]  # the second segment changes
        compressor.compress(model, changed, cache=cache)
        assert (cache.hits, cache.misses, len(cache)) == (6, 4, 3)
        compressor.compress(model, context, cache=cache)  # its old entry was the least recently used: evicted
        assert (cache.hits, cache.misses) == (8, 5)
        # A changed compressor never hits entries of the old weights.
        compressor.head.bias.add_(1.0)
        compressor.compress(model, context, cache=cache)
        assert cache.misses == 8
    with pytest.raises(ValueError, match="cache= is for inference"):
        compressor.compress(model, context, cache=cache)
    with pytest.raises(ValueError, match="max_entries=0"):
        SegmentCache(max_entries=0)


# ------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path):
    model = tiny_model("qwen2")
    compressor = SegmentCompressor(CompressionConfig(segment_len=6, ratio=3, residual="none"), model)
    _randomise_lora(compressor)
    context = list(range(5, 25))
    with torch.no_grad():
        expected = compressor.compress(model, context)
    folder = compressor.save(tmp_path / "comp")
    assert sorted(p.name for p in folder.iterdir()) == ["compressor.safetensors", "compressor_config.json"]
    fresh = tiny_model("qwen2")
    loaded = SegmentCompressor.load(folder, fresh)
    with torch.no_grad():
        torch.testing.assert_close(loaded.compress(fresh, context), expected, atol=0, rtol=0)
    assert loaded.fingerprint() == compressor.fingerprint()
    compressor.save(folder)  # replacing an existing folder works
    with pytest.raises(ValueError, match="hidden_size"):
        SegmentCompressor.load(folder, _wider_model())
    with pytest.raises(FileNotFoundError, match="holds no saved compressor"):
        SegmentCompressor.load(tmp_path / "nothing", fresh)


def _wider_model():  # noqa: ANN202
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=83, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=1)
    return AutoModelForCausalLM.from_config(config).eval()


# ------------------------------------------------------------------ errors
def test_bad_inputs_fail_before_model_work():
    model = tiny_model("gpt2")  # n_positions 512
    compressor = SegmentCompressor(CompressionConfig(segment_len=10, ratio=2), model)
    ids = torch.randint(5, 60, (1, 1200))
    mask = torch.ones_like(ids)
    ctx = torch.zeros_like(ids)
    ctx[0, 10:1190] = 1  # 1180 tokens -> 590 CEs, + 20 prompt tokens = 610 > 512
    with pytest.raises(ValueError, match="make 610 positions > max_position_embeddings=512"):
        compressor.prefill(ctx)(model, ids, mask)
    ids, mask, ctx = _batch()
    holes = ctx.clone()
    holes[0, 10] = 0
    with pytest.raises(ValueError, match="context_mask row 0 is not one contiguous span"):
        compressor.prefill(holes)(model, ids, mask)
    on_padding = ctx.clone()
    on_padding[1, :8] = 1  # row 1 starts with 5 padding positions
    with pytest.raises(ValueError, match="context_mask row 1 marks padding"):
        splice_context(model, compressor, ids, mask, on_padding)
    with pytest.raises(ValueError, match="segment 0 has 11 tokens"):
        compressor.encode_segments(model, [list(range(5, 16))])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        compressor.compress(model, [5, 999])
    with pytest.raises(ValueError, match="context_ids is empty"):
        compressor.compress(model, [])


def test_truncation_baseline_keeps_the_context_end():
    ids, mask, ctx = _batch()
    new_ids, new_mask, new_ctx = truncate_context(ids, mask, ctx, [5, 0], side="end")
    assert new_ctx.sum(1).tolist() == [5, 0]
    row0 = new_ids[0][new_mask[0].bool()]
    expected = torch.cat([ids[0, :3], ids[0, 23:28], ids[0, 28:]])
    assert torch.equal(row0, expected)
    with pytest.raises(ValueError, match="keep\\[0\\]=99"):
        truncate_context(ids, mask, ctx, [99, 0])


# -------------------------------------------------------------------- data
def test_long_context_records_are_deterministic_and_answerable():
    a, b = make_record(3, 7, n_people=5, distractors=4), make_record(3, 7, n_people=5, distractors=4)
    assert a == b and a != make_record(3, 8, n_people=5, distractors=4)
    assert a["answer_sentence"] in a["context"] and a["answer"] in a["answer_sentence"]
    assert answer_correct(f"{a['person']} has the answer {a['answer']}.", a["answer"])
    assert answer_correct(a["answer"].upper(), a["answer"])
    assert not answer_correct(f"No idea. {a['answer']}", a["answer"])


def test_datamodule_marks_the_exact_context_span(tokenizer):
    data = _qa_module(tokenizer, max_context_tokens=60)
    data.setup()
    batch = next(iter(data.test_dataloader()))
    for i, record in enumerate(batch["records"]):
        ids = batch["input_ids"][i][batch["context_mask"][i].bool()]
        pids = batch["prompt_ids"][i][batch["prompt_context_mask"][i].bool()]
        assert torch.equal(ids, pids) and ids.numel() <= 60
        text = tokenizer.decode(ids)
        assert record["answer_sentence"] in text
        labelled = batch["labels"][i][batch["labels"][i] != -100]
        assert tokenizer.decode(labelled[:-1]) == record["answer"]
    with pytest.raises(ValueError, match="n_people=0 must be an integer >= 1"):
        LongContextQADataModule(tokenizer=tokenizer, n_people=0)


# ------------------------------------------------------------ module + CLI
def test_module_trains_and_checkpoints_compressor_only(tmp_path, tokenizer):
    from lightning.pytorch import Trainer

    from softtok.modules.compression import CompressionModule

    model = tiny_model("llama")
    module = CompressionModule.from_model(model, tokenizer, {"segment_len": 8, "ratio": 2},
                                          lr=1e-2, max_new_tokens=3, export_dir=str(tmp_path / "export"))
    data = _qa_module(tokenizer)
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=1,
                      val_check_interval=2, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    before = {k: v.clone() for k, v in module.compressor.state_dict().items()}
    trainer.fit(module, datamodule=data)
    assert any(not torch.equal(before[k], v) for k, v in module.compressor.state_dict().items())
    assert "val/accuracy" in trainer.callback_metrics
    path = tmp_path / "c.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("compressor.") for k in ckpt["state_dict"])
    loaded = SegmentCompressor.load(tmp_path / "export", tiny_model("llama"))
    assert loaded.fingerprint() == module.compressor.fingerprint()


@pytest.mark.slow
def test_cli_recipe_runs(tmp_path, model_dir):
    cmd = [sys.executable, "-m", "softtok.cli", "fit", "-c", os.path.join(ROOT, "configs/compression/tiny.yaml"),
           f"--model.model={model_dir}", f"--data.tokenizer={model_dir}", f"--trainer.default_root_dir={tmp_path}",
           f"--model.export_dir={tmp_path / 'export'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "export" / "compressor.safetensors").is_file()


@pytest.mark.slow
def test_example_runs_on_a_tiny_model():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples/compress_context.py"), "--tiny"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "concept embeddings" in result.stdout



def test_save_never_deletes_other_files(tmp_path):
    compressor = SegmentCompressor(CompressionConfig(segment_len=4, ratio=2, lora_r=2), tiny_model("llama"))
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an empty folder or a saved compressor"):
        compressor.save(folder)
    assert (folder / "notes.txt").read_text() == "keep me"
    (tmp_path / "file.ckpt").write_text("x")
    with pytest.raises(FileExistsError):
        compressor.save(tmp_path / "file.ckpt")
    compressor.save(tmp_path / "saved")
    compressor.save(tmp_path / "saved")  # replacing a saved compressor is allowed
    assert not SegmentCompressor.load(tmp_path / "saved", tiny_model("llama")).training  # loaded for inference


def test_compressor_refuses_a_model_it_was_not_built_on():
    """Two models each with a compressor: neither compressor runs on the other's model (another LoRA)."""
    config = CompressionConfig(segment_len=4, ratio=2, lora_r=2)
    model_a, model_b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    compressor_a = SegmentCompressor(config, model_a)
    SegmentCompressor(config, model_b)
    with pytest.raises(ValueError, match="does not hold the compressor's adapter"):
        compressor_a.compress(model_b, [5, 6, 7, 8, 9])
