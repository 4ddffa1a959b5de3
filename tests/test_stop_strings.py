"""Stop strings and think-end strings are found however many tokens they span."""

import pytest
import torch
from scripted import ScriptedLM, peaked
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.generation.stops import StreamMatcher


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE tokenizer trained in code: CJK characters stay 3 byte tokens each."""
    raw = ByteLevelBPETokenizer()
    raw.train_from_iterator(["Final answer: 42", "the answer is", "Final answer:"] * 20, vocab_size=300,
                            min_frequency=2, special_tokens=["<pad>", "<eos>", "</think>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw._tokenizer, pad_token="<pad>", eos_token="<eos>",
                                  additional_special_tokens=["</think>"], padding_side="left")
    return tok


def script_model(tok, token_ids):
    """Position p predicts token_ids[p]; afterwards EOS."""
    eos = tok.convert_tokens_to_ids("<eos>")
    rows = [peaked(len(tok), t) for t in token_ids] + [peaked(len(tok), eos)] * 4
    return ScriptedLM(torch.stack(rows), eos_token_id=eos)


def generate(tok, model, **kwargs):
    cfg = GenerationConfig(**{"mode": "discrete", "temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                              "think_end": "</think>", **kwargs})
    return SoftThinkingGenerator(model, tok, cfg).generate([[tok.convert_tokens_to_ids("<pad>")]])[0]


def first_match(matcher, ids):
    """The first step at which the device matcher fires on the stream ``ids`` (one row), or None."""
    history = matcher.empty(1)
    for t, i in enumerate(ids):
        history = matcher.push(history, torch.tensor([i]), torch.tensor([True]))
        if matcher.matched(history).item():
            return t
    return None


def first_in_text(tok, ids, string):
    """Oracle: the first prefix of ``ids`` whose decoded text contains ``string``."""
    return next((t for t in range(len(ids)) if string in tok.decode(ids[: t + 1])), None)


@pytest.mark.parametrize("string", ["</think>", "Final answer:", "最终答案是", "\n\n", "is 4"])
def test_stream_matcher_fires_where_the_text_first_contains_the_string(string, bpe):
    """Random streams built from pieces of the string (bytes, merges, trailing text) and noise:
    the device matcher fires exactly at the first prefix whose decoded text contains it."""
    pieces = sorted({i for c in string for i in bpe.encode(c, add_special_tokens=False)}
                    | set(bpe.encode(string, add_special_tokens=False))
                    | set(bpe.encode(string + " the", add_special_tokens=False))
                    | set(bpe.encode("answer is 42", add_special_tokens=False)))
    matcher = StreamMatcher(bpe, [string], "cpu")
    gen = torch.Generator().manual_seed(0)
    fired = 0
    for _ in range(150):
        ids = [pieces[j] for j in torch.randint(len(pieces), (30,), generator=gen).tolist()]
        if torch.rand((), generator=gen) < 0.5:  # plant the string in some tokenization
            at = int(torch.randint(20, (), generator=gen))
            ids[at:at] = bpe.encode(" " + string, add_special_tokens=False)
        expected = first_in_text(bpe, ids, string)
        assert first_match(matcher, ids) == expected, (ids, bpe.decode(ids))
        fired += expected is not None
    assert fired > 50  # the test exercised matches, not only misses


def test_stream_matcher_keeps_rows_apart(bpe):
    """Rows advance only where asked: a row that is not pushed keeps its history."""
    matcher = StreamMatcher(bpe, ["is 4"], "cpu")
    ids = bpe.encode("it is 4", add_special_tokens=False)
    history = matcher.empty(2)
    for t, i in enumerate(ids):
        history = matcher.push(history, torch.tensor([i, i]), torch.tensor([True, t != len(ids) - 1]))
    assert matcher.matched(history).tolist() == [True, False]


@pytest.mark.parametrize("stop", ["最终答案是", "答案是 最终", "xq zv jk!"])
def test_long_stop_string_ends_the_answer(stop, bpe):
    """A stop string of 9 to 15 tokens ends the answer exactly where it completes."""
    answer = "答案 the answer is 42 xq zv 答案是 最终答案是 42 xq zv jk! and more text"
    ids = [bpe.convert_tokens_to_ids("</think>")] + bpe.encode(answer, add_special_tokens=False)
    assert len(bpe.encode(stop, add_special_tokens=False)) > 8
    res = generate(bpe, script_model(bpe, ids), max_answer_tokens=60, stop_strings=(stop,))
    assert res.think_end == "think_end"
    assert res.answer.endswith(stop) and answer.startswith(res.answer)
    assert res.answer.count(stop) == 1


def test_think_end_split_into_more_tokens_than_its_encoding(bpe):
    """The model may write the think-end string byte by byte although it encodes to a few merged tokens."""
    think_end = "Final answer:"
    merged = bpe.encode(think_end, add_special_tokens=False)
    pieces = [bpe.convert_tokens_to_ids(bpe.convert_ids_to_tokens(bpe.encode(c, add_special_tokens=False)))
              for c in "so " + think_end]
    pieces = [i for group in pieces for i in group]
    assert len(pieces) > len(merged) + 4  # the old tail window (encoding + 4 tokens) missed this
    ids = pieces + bpe.encode(" 42", add_special_tokens=False)
    res = generate(bpe, script_model(bpe, ids), think_end=think_end, max_answer_tokens=3, max_think_tokens=40)
    assert res.think_end == "think_end" and res.thinking == "so " + think_end and res.answer.strip() == "42"


@pytest.mark.slow
def test_issue_example_with_the_embedded_tokenizer():
    """The reported input: "最终答案是" is 9 SmolLM2 tokens."""
    from transformers import AutoTokenizer

    from softtok.models import model_path, prepare_tokenizer

    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(model_path("smollm2-135m")))
    stop = "最终答案是"
    assert len(tok.encode(stop, add_special_tokens=False)) == 9
    think_end = tok.encode("Final answer:", add_special_tokens=False)
    answer = tok.encode(" 我想 最终答案是 5。 还有", add_special_tokens=False)
    rows = [peaked(len(tok), t) for t in think_end + answer] + [peaked(len(tok), tok.eos_token_id)] * 3
    model = ScriptedLM(torch.stack(rows), eos_token_id=tok.eos_token_id)
    cfg = GenerationConfig(mode="discrete", temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                           think_end="Final answer:", stop_strings=(stop,), max_answer_tokens=40)
    res = SoftThinkingGenerator(model, tok, cfg).generate([[tok.eos_token_id]])[0]
    assert res.answer.strip() == "我想 最终答案是"
