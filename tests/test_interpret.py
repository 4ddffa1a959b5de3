"""Reading soft tokens (softtok.interpret): vocabulary neighbours, the context index, ``softtok describe``.

Oracles: neighbours against a brute-force search over the whole (scaled) vocabulary or
index computed another way (``torch.cdist``, one normalised matmul, numpy without memory
maps), a stored context found again from its own hidden state, and byte-identical rebuilds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import tiny_model
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from softtok.interpret import (
    ContextIndex,
    contextual_neighbours,
    default_layers,
    hidden_states,
    vocab_neighbours,
)

CORPUS = ["1 + 1 = 2", "the cat sat on the mat", "2 + 3 = 5", "the cat sat on the mat", "the dog sat.", "9 - 4 = 5"]


def scaled_vocab(model: nn.Module) -> torch.Tensor:
    """The vocabulary as fed, from the weight and the config (Gemma scales by sqrt(hidden_size))."""
    weight = model.get_input_embeddings().weight.detach().float()
    scale = model.config.hidden_size ** 0.5 if model.config.model_type.startswith("gemma") else 1.0
    return weight * scale


def brute_force(queries: torch.Tensor, vocab: torch.Tensor, n: int):  # noqa: ANN201
    cos = nn.functional.normalize(queries, dim=-1) @ nn.functional.normalize(vocab, dim=-1).T
    dist = torch.cdist(queries.double(), vocab.double())
    return cos.topk(n, dim=1), dist.topk(n, dim=1, largest=False)


def assert_same_neighbours(ids, scores, ref_ids, ref_scores, atol):  # noqa: ANN001
    """Scores equal; ids equal wherever the reference has no near-tie around that rank."""
    torch.testing.assert_close(scores.double(), ref_scores.double(), atol=atol, rtol=1e-5)
    gaps = (ref_scores[:, 1:] - ref_scores[:, :-1]).abs()
    clear = torch.ones_like(ref_ids, dtype=torch.bool)
    clear[:, 1:] &= gaps > 10 * atol
    clear[:, :-1] &= gaps > 10 * atol
    assert clear.float().mean() > 0.9  # the comparison is not vacuous
    assert torch.equal(ids[clear], ref_ids[clear])


# ---------------------------------------------------------------------------------------- vocabulary
@pytest.mark.parametrize("arch", ["llama", "gemma", "gpt2"])
def test_each_vocabulary_row_is_its_own_nearest_neighbour(arch: str, tokenizer) -> None:
    model = tiny_model(arch)
    vocab = scaled_vocab(model)
    rows = [i for i in range(len(vocab)) if vocab[i].norm() > 0]  # Gemma's padding row is zero
    queries = model.get_input_embeddings()(torch.tensor(rows)).detach()
    if arch == "gemma":  # the module's scale is in the queries: raw rows would be 8x shorter
        torch.testing.assert_close(queries, vocab[rows])
        assert model.get_input_embeddings().embed_scale == pytest.approx(8.0)
    near = vocab_neighbours(queries, model, tokenizer, n=4, chunk_size=30)  # 3 x 3 blocks of queries x vocabulary
    assert near.cosine.ids[:, 0].tolist() == rows
    assert near.l2.ids[:, 0].tolist() == rows
    torch.testing.assert_close(near.cosine.scores[:, 0], torch.ones(len(rows)), atol=1e-5, rtol=0)
    torch.testing.assert_close(near.l2.scores[:, 0], torch.zeros(len(rows)), atol=1e-5, rtol=0)
    (cos, cos_ids), (dist, dist_ids) = brute_force(queries, vocab, 4)
    assert_same_neighbours(near.cosine.ids, near.cosine.scores, cos_ids, cos, 1e-5)
    assert_same_neighbours(near.l2.ids, near.l2.scores, dist_ids, dist, 1e-4)
    assert near.cosine.tokens[3][0] == tokenizer.decode([rows[3]])
    torch.testing.assert_close(near.norms, vocab[rows].norm(dim=1))


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_neighbours_of_mixtures_and_noise_match_a_brute_force_search(arch: str) -> None:
    from softtok.soft.embedding import embed_sparse
    from softtok.soft.token import SoftToken

    model = tiny_model(arch)
    vocab = scaled_vocab(model)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(vocab), (30, 4), generator=generator)
    weights = torch.rand(30, 4, generator=generator).softmax(-1)
    mixtures = embed_sparse(model.get_input_embeddings(), SoftToken(ids, weights)).detach()
    noisy = mixtures + 0.3 * vocab.std() * torch.randn(mixtures.shape, generator=generator)
    queries = torch.cat([mixtures, noisy])
    near = vocab_neighbours(queries, model.get_input_embeddings(), n=6, chunk_size=32)
    (cos, cos_ids), (dist, dist_ids) = brute_force(queries, vocab, 6)
    assert_same_neighbours(near.cosine.ids, near.cosine.scores, cos_ids, cos, 1e-5)
    assert_same_neighbours(near.l2.ids, near.l2.scores, dist_ids, dist, 1e-4)
    assert near.cosine.tokens is None


class _Exploding(nn.Embedding):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the vocabulary was read before the inputs were checked")


@pytest.mark.parametrize(
    ("embeds", "n", "named"),
    [
        (torch.zeros(3, 32), 5, r"width 32 .*\(hidden size\) 64"),
        (torch.zeros(2, 3, 64), 5, r"shape \(2, 3, 64\)"),
        (torch.zeros(3, 64), 0, r"n=0 .*\[1, 83\]"),
        (torch.zeros(3, 64), 84, r"n=84 .*\[1, 83\]"),
        (torch.full((3, 64), float("nan")), 5, "finite"),
    ],
)
def test_bad_vocabulary_queries_raise_before_any_work(embeds: torch.Tensor, n: int, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        vocab_neighbours(embeds, _Exploding(83, 64), n=n)


# ------------------------------------------------------------------------------------- hidden states
@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_hidden_states_of_embeddings_equal_those_of_the_token_ids(arch: str, tokenizer) -> None:
    model = tiny_model(arch)
    ids = tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    embeds = model.get_input_embeddings()(torch.tensor(ids[4:])).detach()
    states = hidden_states(model, embeds, [0, 1, 2], prefix_ids=ids[:4])
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert states.shape == (3, len(ids) - 4, 64)
    for i, layer in enumerate([0, 1, 2]):
        torch.testing.assert_close(states[i], ref[layer][0, 4:].float(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"layers \[3\] out of range: the model has 2 layers"):
        hidden_states(model, embeds, [1, 3])


def test_default_layers_follow_latentlens() -> None:
    assert default_layers(30) == [1, 2, 4, 8, 16, 24, 28, 29]  # SmolLM2-135M
    assert default_layers(32) == [1, 2, 4, 8, 16, 24, 30, 31]
    assert default_layers(2) == [0, 1]


# ----------------------------------------------------------------------------------------- the index
@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _files(path) -> dict[str, bytes]:  # noqa: ANN001
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _prefixes(tokenizer, texts: list[str], min_position: int = 2) -> list[tuple[int, ...]]:  # noqa: ANN001
    """Distinct token-id prefixes in corpus order (the contexts an uncapped index stores)."""
    seen, out = set(), []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        for pos in range(min_position, len(ids)):
            prefix = tuple(ids[:pos + 1])
            if prefix not in seen:
                seen.add(prefix)
                out.append(prefix)
    return out


def test_index_finds_a_stored_context_from_its_own_hidden_state(llama, tokenizer, tmp_path) -> None:
    index = ContextIndex.build(llama, tokenizer, CORPUS, tmp_path / "ix", layers=[1, 2], dtype="float32",
                               batch_size=4)
    text = "the cat sat on the mat"
    ids = tokenizer(text)["input_ids"]
    embeds = llama.get_input_embeddings()(torch.tensor(ids)).detach()
    matches = contextual_neighbours(llama, index, embeds, top_n=3)
    for pos in range(2, len(ids)):  # positions 0 and 1 are not stored (min_position=2)
        best = matches[pos][0]
        assert best.context == text[:pos + 1]
        assert best.token_id == ids[pos] and best.token == text[pos]
        assert best.cosine == pytest.approx(1.0, abs=1e-5)
        assert [m.cosine for m in matches[pos]] == sorted((m.cosine for m in matches[pos]), reverse=True)


def test_index_search_matches_a_brute_force_search_over_all_layers(llama, tokenizer, tmp_path) -> None:
    # (not layer 0: there a token's state is its embedding at every position, so ties would decide the order)
    index = ContextIndex.build(llama, tokenizer, CORPUS, tmp_path / "ix", layers=[1, 2], dtype="float32")
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(2, 5, 64, generator=generator)
    found = index.search(queries, top_n=7, chunk_size=5)  # several chunks per layer
    stored = {layer: torch.from_numpy(np.load(tmp_path / "ix" / f"layer_{layer}.npy")) for layer in (1, 2)}
    sims = torch.cat([nn.functional.normalize(queries[i], dim=-1) @ stored[layer].T
                      for i, layer in enumerate((1, 2))], dim=1)  # [5, 2N], layer-major
    top, pos = sims.topk(7, dim=1)
    count = len(index)
    for q in range(5):
        assert [(m.layer, m.row) for m in found[q]] == [(1 + int(p) // count, int(p) % count) for p in pos[q]]
        torch.testing.assert_close(torch.tensor([m.cosine for m in found[q]]), top[q])
    assert {m.layer for q in found for m in q} == {1, 2}  # the merge draws on both layers
    torch.testing.assert_close(stored[1].norm(dim=1), torch.ones(count))


def test_duplicate_prefixes_are_stored_once(llama, tokenizer, tmp_path) -> None:
    index = ContextIndex.build(llama, tokenizer, CORPUS, tmp_path / "ix", layers=[1], dtype="float32")
    prefixes = _prefixes(tokenizer, CORPUS)
    assert len(index) == len(prefixes)  # the repeated sentence adds nothing, shared prefixes count once
    contexts = [index.context(r) for r in range(len(index))]
    assert contexts == [tokenizer.decode(list(p)) for p in prefixes]
    assert len(set(contexts)) == len(contexts)
    ContextIndex.build(llama, tokenizer, CORPUS[:3] + CORPUS[4:], tmp_path / "once", layers=[1],
                              dtype="float32")
    assert _files(tmp_path / "ix")["layer_1.npy"] == _files(tmp_path / "once")["layer_1.npy"]


def test_contexts_per_token_are_capped(llama, tokenizer, tmp_path) -> None:
    index = ContextIndex.build(llama, tokenizer, CORPUS, tmp_path / "ix", layers=[1], max_contexts_per_token=2)
    ids = index.manifest["entries"]["token_id"]
    expected = {}
    for prefix in _prefixes(tokenizer, CORPUS):  # first come, first served
        if expected.get(prefix[-1], 0) < 2:
            expected[prefix[-1]] = expected.get(prefix[-1], 0) + 1
    assert {i: ids.count(i) for i in set(ids)} == expected
    assert max(expected.values()) == 2 and len(ids) < len(_prefixes(tokenizer, CORPUS))


def test_building_twice_writes_identical_files(llama, tokenizer, tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n\n")
    ContextIndex.build(llama, tokenizer, CORPUS, tmp_path / "a", layers=[1, 2])
    ContextIndex.build(llama, tokenizer, str(corpus), tmp_path / "b", layers=[1, 2])  # the same lines from a file
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == ["layer_1.npy", "layer_2.npy", "manifest.json"]
    assert a == b
    manifest = json.loads(a["manifest.json"])
    assert manifest["dtype"] == "float16" and manifest["model"]["hidden_size"] == 64
    assert np.load(tmp_path / "a" / "layer_1.npy", mmap_mode="r").dtype == np.float16
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ContextIndex.build(llama, tokenizer, CORPUS, tmp_path / "a", layers=[1, 2])


def test_build_index_command_writes_the_index_of_the_python_api(model_dir, tmp_path) -> None:
    from softtok.interpret.build_index import main
    from softtok.models import load_model

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    main([str(corpus), str(tmp_path / "cli"), "--model", model_dir, "--layers", "2", "1"])
    model, tok = load_model(model_dir)
    ContextIndex.build(model, tok, CORPUS, tmp_path / "api", layers=[1, 2])
    assert _files(tmp_path / "cli") == _files(tmp_path / "api")
    with pytest.raises(SystemExit):
        main([str(corpus), str(tmp_path / "bad"), "--model", model_dir, "--layers", "9"])
    assert not (tmp_path / "bad").exists()


def test_float16_index_still_finds_its_contexts(llama, tokenizer, tmp_path) -> None:
    index = ContextIndex.build(llama, tokenizer, CORPUS[:3], tmp_path / "ix", layers=[2])
    ids = tokenizer(CORPUS[2])["input_ids"]
    matches = contextual_neighbours(llama, index, llama.get_input_embeddings()(torch.tensor(ids)).detach())
    assert [m[0].context for m in matches[2:]] == [CORPUS[2][:p + 1] for p in range(2, len(ids))]
    assert min(m[0].cosine for m in matches[2:]) > 0.999


class _NoForward:
    """Makes any forward of ``model`` fail, to show a check ran before it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        def hook(*_):  # noqa: ANN002, ANN202
            raise AssertionError("a forward ran before the check")

        self.handle = self.model.base_model.register_forward_pre_hook(hook)

    def __exit__(self, *_) -> None:  # noqa: ANN002
        self.handle.remove()


def test_index_of_another_model_or_layer_set_raises_before_any_forward(llama, tokenizer, tmp_path) -> None:
    ContextIndex.build(llama, tokenizer, CORPUS, tmp_path / "ix", layers=[1, 2])
    embeds = torch.zeros(2, 64)
    other = tiny_model("llama", seed=1)  # same shapes, other weights
    narrow = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=83, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
    with _NoForward(other), pytest.raises(ValueError, match=r"another model: fingerprint='[0-9a-f]+' there"):
        contextual_neighbours(other, ContextIndex.load(tmp_path / "ix"), embeds)
    with _NoForward(other), pytest.raises(ValueError, match="fingerprint"):
        ContextIndex.load(tmp_path / "ix", model=other)
    with _NoForward(narrow), pytest.raises(ValueError, match=r"hidden_size=64 there .* hidden_size=32 for this"):
        ContextIndex.load(tmp_path / "ix", model=narrow)
    with pytest.raises(ValueError, match=r"built for layers \[1, 2\]; layers=\[1, 0\] asks for \[0\]"):
        ContextIndex.load(tmp_path / "ix", layers=[1, 0])
    assert ContextIndex.load(tmp_path / "ix", model=llama, layers=[2]).layers == [2]  # a subset is fine
    with _NoForward(llama), pytest.raises(ValueError, match=r"layers \[7\] out of range"):
        ContextIndex.build(llama, tokenizer, CORPUS, tmp_path / "bad", layers=[1, 7])
    with _NoForward(llama), pytest.raises(ValueError, match=r"top_n=0"):
        contextual_neighbours(llama, ContextIndex.load(tmp_path / "ix"), embeds, top_n=0)
    with _NoForward(llama), pytest.raises(ValueError, match=r"width 32"):
        contextual_neighbours(llama, ContextIndex.load(tmp_path / "ix"), torch.zeros(2, 32))
    with pytest.raises(ValueError, match=r"max_contexts_per_token=0"):
        ContextIndex.build(llama, tokenizer, CORPUS, tmp_path / "bad", max_contexts_per_token=0)
    assert not (tmp_path / "bad").exists()


# -------------------------------------------------------------------------------- softtok describe
def _prompt_adapter(model_dir: str, folder, init_text: str = "a+b=") -> None:  # noqa: ANN001
    from softtok.models import load_model
    from softtok.prompts import PromptTuningConfig, export_peft

    model, tok = load_model(model_dir)
    prompt = PromptTuningConfig(n_virtual=4, init_text=init_text).build(model, tok)
    export_peft(prompt, folder)
    return prompt


def test_describe_a_soft_prompt_prints_the_table_and_writes_json(model_dir, tmp_path, capsys) -> None:
    from softtok.cli import main

    _prompt_adapter(model_dir, tmp_path / "pt")
    config = tmp_path / "describe.yaml"
    config.write_text(f"prompt: {tmp_path / 'pt'}\nmodel: {model_dir}\ntop_n: 3\n")
    main(["describe", "-c", str(config), "--output", str(tmp_path / "out.json")])
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out.json").read_text())
    assert "4 virtual tokens" in printed and "nearest by cosine" in printed and "'+'" in printed
    assert report["kind"] == "soft_prompt" and [r["position"] for r in report["rows"]] == [0, 1, 2, 3]
    # the prompt is initialised from the text: each row is that token's embedding, cosine 1 and distance 0
    assert [r["cosine"][0]["token"] for r in report["rows"]] == ["a", "+", "b", "="]
    assert [r["l2"][0]["token"] for r in report["rows"]] == ["a", "+", "b", "="]
    assert all(r["cosine"][0]["score"] == pytest.approx(1, abs=1e-5) and len(r["cosine"]) == 3 for r in report["rows"])
    assert all(r["l2"][0]["score"] == pytest.approx(0, abs=1e-5) for r in report["rows"])
    assert report["summary"]["cosine_and_l2_agree"] == 4


def test_describe_a_checkpoint_with_an_index_and_refuses_prefixes(model_dir, tmp_path, capsys) -> None:
    from softtok.interpret.describe import describe
    from softtok.models import load_model
    from softtok.prompts import PrefixTuningConfig, export_peft
    from softtok.prompts.checkpoint import checkpoint_meta

    prompt = _prompt_adapter(model_dir, tmp_path / "pt", init_text="cats")
    torch.save({"softtok_prompt": checkpoint_meta(prompt, model_dir),
                "state_dict": {"prompt.prompt_embeddings": prompt.prompt_embeddings.detach()}}, tmp_path / "p.ckpt")
    model, tok = load_model(model_dir)
    ContextIndex.build(model, tok, [*CORPUS, "cats nap"], tmp_path / "ix", layers=[1, 2])
    report = describe(prompt=str(tmp_path / "p.ckpt"), model=model_dir, index=str(tmp_path / "ix"), index_top_n=2)
    assert (tmp_path / "p.ckpt.describe.json").is_file()
    assert [r["cosine"][0]["token"] for r in report["rows"]] == ["c", "a", "t", "s"]
    assert all(len(r["contexts"]) == 2 and r["contexts"][0]["layer"] in (1, 2) for r in report["rows"])
    assert "nearest context" in capsys.readouterr().out
    # rows 2 and 3, fed from position 0, are the contexts "cat" and "cats" of the corpus line "cats nap"
    contexts = [r["contexts"][0]["context"] for r in report["rows"][2:4]]
    assert contexts == ["cat", "cats"]
    export_peft(PrefixTuningConfig(n_virtual=2, init="random").build(model, tok), tmp_path / "prefix")
    with pytest.raises(ValueError, match="'prefix_tuning' prompt: only prompt tuning"):
        describe(prompt=str(tmp_path / "prefix"), model=model_dir, quiet=True)
    with pytest.raises(ValueError, match="exactly one of prompt"):
        describe(model=model_dir)
    with pytest.raises(ValueError, match="top_n=0"):
        describe(prompt=str(tmp_path / "pt"), model=model_dir, top_n=0)


@pytest.fixture(scope="module")
def soft_results(model_dir):
    """A tiny Soft Thinking module and two generation results with their mixtures (generated once)."""
    from softtok.modules import SoftThinkingModule

    module = SoftThinkingModule(model=model_dir, system_prompt=None, keep_trace=True, generation={
        "mode": "soft", "max_think_tokens": 5, "max_answer_tokens": 2, "think_end": "Final answer:",
        "max_topk": 4, "temperature": 1.0, "top_p": 1.0, "min_p": 0.0, "return_topk": True})
    problems = [{"index": 0, "question": "1 + 1 =", "answer": "2"}, {"index": 1, "question": "2 + 3 =", "answer": "5"}]
    results = module.generator.generate([module.format_prompt(p["question"]) for p in problems], seeds=[1, 2])
    return module, problems, results


def _predictions(soft_results, path, keep_trace: bool = True, return_topk: bool = True) -> list[dict]:  # noqa: ANN001
    """The records ``SoftThinkingModule`` writes with these settings (its own ``to_record``)."""
    import dataclasses

    module, problems, results = soft_results
    module.keep_trace = keep_trace
    if not return_topk:  # what the generator returns without return_topk
        results = [dataclasses.replace(r, topk_ids=None, topk_weights=None) for r in results]
    records = [module.to_record(p, r, 0.0) for p, r in zip(problems, results, strict=True)]
    module.keep_trace = True
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def test_describe_predictions_reads_the_concept_tokens(model_dir, soft_results, tmp_path, capsys) -> None:
    from softtok.cli import main
    from softtok.models import load_model

    records = _predictions(soft_results, tmp_path / "pred.jsonl")
    model, tok = load_model(model_dir)
    ContextIndex.build(model, tok, CORPUS, tmp_path / "ix", layers=[2])
    main(["describe", "--predictions", str(tmp_path / "pred.jsonl"), "--model", model_dir, "--records", "2",
          "--top_n", "2", "--index", str(tmp_path / "ix"), "--index_top_n", "1"])
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "pred.jsonl.describe.json").read_text())
    assert report["kind"] == "predictions" and len(report["records"]) == 2
    assert "record 0" in printed and "top-1 component" in printed
    weight = model.get_input_embeddings().weight.detach()
    for record, described in zip(records, report["records"], strict=True):
        assert len(described["steps"]) == len(record["topk_ids"]) == 5
        for step, ids, weights in zip(described["steps"], record["topk_ids"], record["topk_weights"], strict=True):
            mixture = sum(w * weight[i] for i, w in zip(ids, weights, strict=True))  # computed without embed_sparse
            assert step["norm"] == pytest.approx(float(mixture.norm()), rel=1e-5)
            assert [c["id"] for c in step["components"]] == [i for i, w in zip(ids, weights, strict=True) if w > 0]
            ref = torch.cdist(mixture[None].double(), weight.double())[0]
            assert step["l2"][0]["id"] == int(ref.argmin())
            top1 = ids[max(range(len(ids)), key=lambda k: weights[k])]
            assert step["nearest_is_top1"]["cosine"] == (step["cosine"][0]["id"] == top1)
            assert len(step["contexts"]) == 1 and step["contexts"][0]["layer"] == 2
    assert any(len(step["components"]) > 1 for r in report["records"] for step in r["steps"])  # real mixtures
    assert report["summary"]["steps"] == 10


def test_describe_adds_up_a_token_drawn_twice_and_marks_swir_steps(model_dir, tmp_path) -> None:
    """A multiplex step that drew token 5 twice (0.3 + 0.3) has 5 as its top-1 component, at weight 0.6; a swir
    record's latent flags label its steps; a folder given as the predictions file is named as such."""
    from softtok.interpret.describe import describe

    record = {"index": 0, "sample": 0, "question": "1 + 1 =", "topk_ids": [[5, 7, 5], [9, 0, 0]],
              "topk_weights": [[0.3, 0.4, 0.3], [1.0, 0.0, 0.0]], "latent": [True, False]}
    (tmp_path / "mpx.jsonl").write_text(json.dumps(record) + "\n")
    report = describe(predictions=str(tmp_path / "mpx.jsonl"), model=model_dir, quiet=True)
    first, second = report["records"][0]["steps"]
    assert first["components"] == [{"id": 5, "token": first["components"][0]["token"], "weight": 0.6},
                                   {"id": 7, "token": first["components"][1]["token"], "weight": 0.4}]
    assert first["nearest_is_top1"]["cosine"] == (first["cosine"][0]["id"] == 5)
    assert (first["latent"], second["latent"]) == (True, False) and [c["id"] for c in second["components"]] == [9]
    with pytest.raises(ValueError, match="is a directory"):
        describe(predictions=str(tmp_path), model=model_dir, quiet=True)


def test_describe_predictions_without_mixtures_names_the_missing_field(model_dir, soft_results, tmp_path) -> None:
    from softtok.interpret.describe import describe

    _predictions(soft_results, tmp_path / "plain.jsonl", keep_trace=False)
    with pytest.raises(ValueError, match=r"no 'topk_ids' field .*--model.init_args.generation.return_topk true"):
        describe(predictions=str(tmp_path / "plain.jsonl"), model=model_dir)
    _predictions(soft_results, tmp_path / "trace.jsonl", keep_trace=True, return_topk=False)
    with pytest.raises(ValueError, match=r"'topk_ids' is null \(the run had generation.return_topk off\)"):
        describe(predictions=str(tmp_path / "trace.jsonl"), model=model_dir)
    assert not (tmp_path / "plain.jsonl.describe.json").exists()


def test_cli_errors_exit_with_the_message(model_dir, soft_results, tmp_path, capsys) -> None:
    from softtok.cli import main

    _predictions(soft_results, tmp_path / "plain.jsonl", keep_trace=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["describe", "--predictions", str(tmp_path / "plain.jsonl"), "--model", model_dir])
    assert exit_info.value.code == 2
    assert "no 'topk_ids' field" in capsys.readouterr().err


def test_recipes_parse_and_comment_every_key() -> None:
    from pathlib import Path

    from softtok.interpret.describe import build_parser

    for name in ("soft_prompt", "predictions"):
        path = Path(__file__).parent.parent / "configs" / "interpret" / f"{name}.yaml"
        keys = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
        assert keys and all(" # " in line for line in keys), path
        config = build_parser().parse_args(["-c", str(path)])
        assert (config.prompt is None) != (config.predictions is None)

