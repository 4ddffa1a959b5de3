"""Soft embedding: sparse == dense on every tiny arch, embedding scale, noise, and compiled == eager."""

from __future__ import annotations

import pytest
import torch
from test_mixers import VARIANTS, make_mixer
from tiny import tiny_model
from torch import nn
from torch._dynamo.utils import counters

from softtok.soft import (
    FilterConfig,
    SoftEmbedding,
    SoftToken,
    TopKMixer,
    embed_dense,
    embed_sparse,
    embedding_rms,
    tempered_probs,
)
from softtok.soft.random import RowRandom

SOFT_THINKING = FilterConfig(0.6, 30, 0.95, 0.001)


def random_logits(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vocab, generator=generator) * 3


# --- sparse vs dense, embedding scale ---------------------------------------------------------------------


def test_sparse_and_dense_paths_agree(model: nn.Module) -> None:
    embedding = model.get_input_embeddings()
    vocab = embedding.weight.shape[0]
    logits = random_logits(6, vocab)
    for variant in VARIANTS:
        torch.manual_seed(0)
        step = SoftEmbedding(embedding, SOFT_THINKING, make_mixer(variant, 10, vocab))(logits)
        dense = embed_dense(embedding, step.token.to_dense(vocab))
        torch.testing.assert_close(step.embeds, dense, atol=1e-5, rtol=1e-5, msg=lambda m, v=variant: f"{v}: {m}")
    # With no filter and K = V the sparse path is the full soft input softmax(logits / T) @ E.
    full = SoftEmbedding(embedding, FilterConfig(0.5), TopKMixer(vocab))(logits)
    torch.testing.assert_close(full.embeds, embed_dense(embedding, tempered_probs(logits, 0.5)), atol=1e-5, rtol=1e-5)


def test_one_hot_goes_through_the_embedding_module(model: nn.Module, arch: str) -> None:
    embedding = model.get_input_embeddings()
    ids = torch.tensor([3, 17, 42, 0])
    sparse = embed_sparse(embedding, SoftToken.one_hot(ids))
    torch.testing.assert_close(sparse, embedding(ids))
    dense = embed_dense(embedding, nn.functional.one_hot(ids, embedding.weight.shape[0]).float())
    torch.testing.assert_close(dense, embedding(ids))
    raw = embedding.weight[ids]
    if arch == "gemma":
        # Gemma scales its embeddings by sqrt(D); mixing raw weight rows would lose that factor.
        scale = model.config.hidden_size**0.5
        assert not torch.allclose(sparse, raw)
        torch.testing.assert_close(sparse, raw * scale)
        assert embedding_rms(embedding) == pytest.approx(scale * _raw_rms(embedding), rel=1e-5)
    else:
        torch.testing.assert_close(sparse, raw)


def _raw_rms(embedding: nn.Module) -> float:
    return embedding.weight.detach().pow(2).mean().sqrt().item()


# --- noise ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.33, 1.0])
def test_noise_sigma_is_factor_times_embedding_rms(model: nn.Module, factor: float) -> None:
    embedding = model.get_input_embeddings()
    vocab = embedding.weight.shape[0]
    scale = float(getattr(embedding, "embed_scale", 1.0))
    soft = SoftEmbedding(embedding, SOFT_THINKING, TopKMixer(10), noise_factor=factor)
    assert soft.sigma == pytest.approx(factor * _raw_rms(embedding) * scale, rel=1e-5)

    logits = random_logits(1024, vocab)
    torch.manual_seed(0)
    step = soft(logits)
    noise = step.embeds - embed_sparse(embedding, step.token)
    # 1024 x 64 draws: the sample std is within ~0.3% of sigma; 3% is a loose band.
    assert noise.std().item() == pytest.approx(soft.sigma, rel=0.03)
    assert abs(noise.mean().item()) < 0.03 * soft.sigma  # the mean's std is sigma / 256
    # The same seed gives the same noise; no noise leaves the mixture untouched.
    torch.manual_seed(0)
    torch.testing.assert_close(soft(logits).embeds, step.embeds, atol=0, rtol=0)
    clean = SoftEmbedding(embedding, SOFT_THINKING, TopKMixer(10))(logits)
    torch.testing.assert_close(clean.embeds, embed_sparse(embedding, clean.token), atol=0, rtol=0)


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"mixer": TopKMixer(84)}, "max_topk=84 exceeds the vocabulary size 83"),
        ({"filters": FilterConfig(top_k=100)}, "top_k=100 exceeds the vocabulary size 83"),
        ({"noise_factor": -0.1}, r"noise_factor=-0\.1"),
    ],
)
def test_bad_soft_embedding_values_raise(kwargs: dict, named: str) -> None:
    args = {"filters": FilterConfig(), "mixer": TopKMixer(10)} | kwargs
    with pytest.raises(ValueError, match=named):
        SoftEmbedding(nn.Embedding(83, 8), **args)


def test_k_equal_to_vocabulary_is_allowed() -> None:
    soft = SoftEmbedding(nn.Embedding(83, 8), FilterConfig(top_k=83), TopKMixer(83))
    assert soft(random_logits(2, 83)).token.ids.shape == (2, 83)


# --- torch.compile ----------------------------------------------------------------------------------------
# These compile (Inductor, CPU, ~3-10 s each) and stay in the default run: they are the only guard
# that the compiled path still matches eager and has no graph breaks.


@pytest.fixture(scope="module")
def gemma_embedding() -> nn.Module:
    """A real HF embedding module with a scale buffer (Gemma3), V = 83, D = 64."""
    return tiny_model("gemma").get_input_embeddings()


@pytest.fixture
def fresh_dynamo():
    """Empty dynamo caches.

    Dynamo keeps one cache per code object, shared by every ``SoftEmbedding`` instance, and
    silently falls back to eager past ``recompile_limit`` (8) entries: without the reset the
    compile tests would pile up entries and end up comparing eager with eager. (The random
    draws are counter-based integer hashes, so compiled and eager draw the same numbers
    without Inductor's ``fallback_random``.)
    """
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixers_have_no_graph_breaks(variant: str, gemma_embedding: nn.Module, fresh_dynamo: None) -> None:
    soft = SoftEmbedding(gemma_embedding, SOFT_THINKING, make_mixer(variant, 10, 83), noise_factor=0.3)
    logits = random_logits(4, 83)
    key = RowRandom(torch.arange(4), 3)
    mixed = torch._dynamo.explain(soft.mix_logits)(logits, key)
    assert (mixed.graph_count, mixed.graph_break_count) == (1, 0), mixed.break_reasons
    ids, weights, _ = soft.mix_logits(logits, key)
    embedded = torch._dynamo.explain(soft.embed)(ids, weights, key)
    assert (embedded.graph_count, embedded.graph_break_count) == (1, 0), embedded.break_reasons


def _assert_same_step(eager: SoftEmbedding, compiled: SoftEmbedding, call: int) -> None:
    logits = random_logits(4, 83, seed=call)
    rng = RowRandom(torch.arange(100, 104), step=call)  # the same counter-based draws in both
    want = eager(logits, rng)
    got = compiled(logits, rng)
    assert torch.equal(got.token.ids, want.token.ids)
    torch.testing.assert_close(got.token.weights, want.token.weights, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got.embeds, want.embeds, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got.entropy, want.entropy, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_equals_eager_and_compiles_once(variant: str, gemma_embedding: nn.Module, fresh_dynamo: None) -> None:
    mixer = make_mixer(variant, 10, 83)
    eager = SoftEmbedding(gemma_embedding, SOFT_THINKING, mixer, noise_factor=0.3)
    compiled = SoftEmbedding(gemma_embedding, SOFT_THINKING, mixer, noise_factor=0.3, compile=True)
    before = _graphs()
    _assert_same_step(eager, compiled, 0)
    # Both functions (mix, embed) were compiled by the first call...
    assert _graphs() - before == 2, "the compiled path did not compile (eager fallback?)"
    # ...and new values with the same shapes must reuse them: a recompile raises here.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for call in range(1, 4):
            _assert_same_step(eager, compiled, call)
    assert _graphs() - before == 2, "repeated calls with the same shapes recompiled"


def test_compiled_instances_share_the_graph_not_the_weights(fresh_dynamo: None) -> None:
    # Two instances with one config reuse the compiled graph (no recompile) but each uses its own embedding.
    torch.manual_seed(0)
    first, second = nn.Embedding(83, 16), nn.Embedding(83, 16)
    logits = random_logits(4, 83)
    step_first = SoftEmbedding(first, SOFT_THINKING, TopKMixer(10), compile=True)(logits)
    graphs = _graphs()
    step_second = SoftEmbedding(second, SOFT_THINKING, TopKMixer(10), compile=True)(logits)
    assert _graphs() == graphs
    torch.testing.assert_close(step_first.embeds, embed_sparse(first, step_first.token), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(step_second.embeds, embed_sparse(second, step_second.token), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(step_first.embeds, step_second.embeds)


def test_shrinking_batch_compiles_once_more_not_per_size(gemma_embedding: nn.Module, fresh_dynamo: None) -> None:
    # The generator drops finished rows, so the batch shrinks step by step: one dynamic-shape
    # recompile, then every size reuses it (no silent eager fallback past the recompile limit).
    eager = SoftEmbedding(gemma_embedding, SOFT_THINKING, TopKMixer(10))
    compiled = SoftEmbedding(gemma_embedding, SOFT_THINKING, TopKMixer(10), compile=True)
    before = _graphs()
    for batch in (12, 11, 9, 7, 5, 3, 2):
        logits = random_logits(batch, 83, seed=batch)
        got, want = compiled(logits), eager(logits)
        assert torch.equal(got.token.ids, want.token.ids)
        torch.testing.assert_close(got.embeds, want.embeds, atol=1e-6, rtol=1e-6)
    assert _graphs() - before <= 4  # mix + embed, static then dynamic


# --- half precision ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_mixture_is_rounded_once(dtype: torch.dtype) -> None:
    # Twenty components of one token at weight 0.05 are that token's row. Rounding the weights to the model's dtype
    # first made them sum to 1.00098 (bfloat16) or 0.99976 (float16) and moved the coordinates off the row.
    torch.manual_seed(0)
    embedding = nn.Embedding(83, 64).to(dtype)
    ids = torch.full((3, 20), 7)
    soft = SoftToken(ids, torch.full((3, 20), 0.05))
    mixed = embed_sparse(embedding, soft)
    assert mixed.dtype == dtype
    torch.testing.assert_close(mixed, embedding(ids[:, 0]), atol=0, rtol=0)
    # A general mixture: the float64 mixture of the same rows, rounded once to the dtype.
    ids = torch.randint(0, 83, (16, 10))
    weights = torch.softmax(torch.randn(16, 10) * 3, -1)
    expected = torch.einsum("bk,bkd->bd", weights.double(), embedding(ids).double()).to(dtype)
    mixed = embed_sparse(embedding, SoftToken(ids, weights))
    ulp = torch.finfo(dtype).eps * expected.double().abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((mixed.double() - expected.double()).abs() <= ulp).all()  # within one rounding (+ float32 error)
