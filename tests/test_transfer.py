"""Prompt transfer (POST) core: the loss against hand computations, S = L fixed point, layer keeping, bad input."""

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, LlamaConfig

from softtok.generation.prefill import positions_from_mask
from softtok.prompts import PrefixTuningConfig, PromptTuningConfig, export_peft
from softtok.prompts.shrink import every_other_layer, keep_layers, resolve_keep
from softtok.prompts.transfer import (
    check_same_tokenizer,
    feature_mask,
    load_prompt,
    mean_transfer_loss,
    transfer_loss,
)


def batch(tokenizer, texts=("1+2=3", "a longer row 45"), answer_from=3):
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    labels[:, :answer_from] = -100
    return enc["input_ids"], enc["attention_mask"], labels


def prompt_for(model, tokenizer, seed=0, n=3, config=None):
    torch.manual_seed(seed)
    config = config or PromptTuningConfig(n_virtual=n, init="random")
    return config.build(model, tokenizer)


@pytest.mark.parametrize("loss", ["kl", "mse"])
@pytest.mark.parametrize("variant", ["absolute", "shift"])
@pytest.mark.parametrize("features_kind", ["logits", "hidden"])
def test_same_model_same_prompt_is_a_fixed_point(loss, variant, features_kind, tokenizer):
    model = tiny_model("llama")
    model.requires_grad_(False)
    source = prompt_for(model, tokenizer)
    target = copy.deepcopy(source)
    ids, mask, labels = batch(tokenizer)
    value = transfer_loss(model, target, model, source, ids, mask, labels, loss=loss, variant=variant,
                          features_kind=features_kind)
    value.backward()
    assert abs(value.item()) < 1e-6
    assert target.prompt_embeddings.grad.abs().max().item() < 1e-6
    # ...and a different target prompt is not: the test can fail.
    other = prompt_for(model, tokenizer, seed=1)
    assert transfer_loss(model, other, model, source, ids, mask, labels, loss=loss, variant=variant,
                         features_kind=features_kind).item() > 1e-4


def injected_outputs(model, prompt, ids, mask):
    """Full logits and last hidden state at the text positions, by hand (no logits_to_keep, no gather helper)."""
    inj = prompt.inject(model, ids, mask)
    out = prompt.model_forward(model, inj, output_hidden_states=True)
    logits = torch.stack([out.logits[b, inj.text_index[b]] for b in range(ids.shape[0])])
    hidden = torch.stack([out.hidden_states[-1][b, inj.text_index[b]] for b in range(ids.shape[0])])
    return logits, hidden


def plain_outputs(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), output_hidden_states=True)
    return out.logits, out.hidden_states[-1]


@pytest.mark.parametrize("positions", ["all", "answer", "last"])
def test_kl_and_mse_equal_hand_computation(positions, tokenizer):
    small, large = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    source, target = prompt_for(small, tokenizer, 0), prompt_for(large, tokenizer, 1)
    ids, mask, labels = batch(tokenizer)
    s_logits, s_hidden = injected_outputs(small, source, ids, mask)
    t_logits, t_hidden = injected_outputs(large, target, ids, mask)
    # The positions, by hand: real tokens / tokens followed by a label / each row's last real token.
    rows = []
    for b in range(ids.shape[0]):
        real = [t for t in range(ids.shape[1]) if mask[b, t]]
        if positions == "all":
            rows += [(b, t) for t in real]
        elif positions == "answer":
            rows += [(b, t) for t in range(ids.shape[1] - 1) if labels[b, t + 1] != -100]
        else:
            rows.append((b, real[-1]))
    temp = 2.0
    kl = sum(
        (F.softmax(s_logits[b, t] / temp, -1) * (F.log_softmax(s_logits[b, t] / temp, -1)
                                                - F.log_softmax(t_logits[b, t] / temp, -1))).sum()
        for b, t in rows) / len(rows) * temp**2
    mse = sum(((t_hidden[b, t] - s_hidden[b, t]) ** 2).sum() for b, t in rows) / (len(rows) * s_hidden.shape[-1])
    got_kl = transfer_loss(large, target, small, source, ids, mask, labels, positions=positions)
    got_mse = transfer_loss(large, target, small, source, ids, mask, labels, loss="mse", positions=positions,
                            features_kind="hidden")
    torch.testing.assert_close(got_kl, kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_mse, mse, rtol=1e-5, atol=1e-7)


def test_shift_variant_equals_hand_computation(tokenizer):
    small, large = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    source, target = prompt_for(small, tokenizer, 0), prompt_for(large, tokenizer, 1)
    ids, mask, labels = batch(tokenizer)
    s_logits, _ = injected_outputs(small, source, ids, mask)
    t_logits, _ = injected_outputs(large, target, ids, mask)
    s_base, _ = plain_outputs(small, ids, mask)
    t_base, _ = plain_outputs(large, ids, mask)
    keep = mask.bool()
    s_shift, t_shift = (s_logits - s_base)[keep], (t_logits - t_base)[keep]
    temp = 2.0
    expected = (F.softmax(s_shift / temp, -1) * (F.log_softmax(s_shift / temp, -1)
                                                 - F.log_softmax(t_shift / temp, -1))).sum(-1).mean() * temp**2
    got = transfer_loss(large, target, small, source, ids, mask, labels, variant="shift")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    got_mse = transfer_loss(large, target, small, source, ids, mask, labels, variant="shift", loss="mse")
    torch.testing.assert_close(got_mse, F.mse_loss(t_shift, s_shift), rtol=1e-5, atol=1e-7)


def test_prefix_source_and_left_padding_line_up(tokenizer):
    """A prefix-tuning source and a prompt-tuning target: rows of the two layouts are matched position by position."""
    model = tiny_model("llama")
    torch.manual_seed(0)
    source = PrefixTuningConfig(n_virtual=2, init_text="ab").build(model, tokenizer)
    target = prompt_for(model, tokenizer, 1)
    ids, mask, labels = batch(tokenizer)  # the tiny tokenizer pads on the left
    rows = []
    for b in range(ids.shape[0]):  # each row alone, unpadded: the padded batch must give the same loss
        real = mask[b].bool()
        rows.append(transfer_loss(model, target, model, source, ids[b:b + 1, real], mask[b:b + 1, real]))
    lengths = mask.sum(-1).float()
    expected = sum(r * n for r, n in zip(rows, lengths, strict=True)) / lengths.sum()
    torch.testing.assert_close(transfer_loss(model, target, model, source, ids, mask), expected, rtol=1e-4, atol=1e-6)


def test_transfer_lowers_the_loss_and_held_out_metric(tokenizer):
    """Same model, another initial prompt: training on public rows moves the target towards the source."""
    small = large = tiny_model("llama", seed=1).requires_grad_(False)
    source, target = prompt_for(small, tokenizer, 0), prompt_for(large, tokenizer, 1)
    train = batch(tokenizer, ("1+2=3", "4+4=8", "7-2=5"))
    held_out = [dict(zip(("input_ids", "attention_mask", "labels"), batch(tokenizer, ("2+2=4", "9-1=8")),
                         strict=True))]
    before = mean_transfer_loss(large, target, small, source, held_out)
    optimizer = torch.optim.Adam(target.parameters(), lr=0.05)
    for _ in range(30):
        optimizer.zero_grad()
        transfer_loss(large, target, small, source, *train).backward()
        optimizer.step()
    assert mean_transfer_loss(large, target, small, source, held_out) < 0.5 * before


def test_feature_mask_and_bad_options(tokenizer):
    ids, mask, labels = batch(tokenizer)
    assert feature_mask(mask, positions="last").sum(-1).tolist() == [1, 1]
    assert feature_mask(mask, positions="last")[:, -1].all()  # left padding: the last column is real
    model = tiny_model("llama")
    prompt = prompt_for(model, tokenizer)
    for kwargs, match in [({"loss": "l1"}, "loss='l1'.*kl, mse"), ({"variant": "relative"}, "variant"),
                          ({"positions": "first"}, "positions"), ({"temperature": 0}, "temperature=0"),
                          ({"features_kind": "attn"}, "features")]:
        with pytest.raises(ValueError, match=match):
            transfer_loss(model, prompt, model, prompt, ids, mask, labels, **kwargs)
    with pytest.raises(ValueError, match="needs labels"):
        transfer_loss(model, prompt, model, prompt, ids, mask, None, positions="answer")
    with pytest.raises(ValueError, match="temperature=inf"):
        transfer_loss(model, prompt, model, prompt, ids, mask, labels, temperature=float("inf"))
    with pytest.raises(ValueError, match="selects no position"):  # every label -100: nothing to match
        transfer_loss(model, prompt, model, prompt, ids, mask, torch.full_like(labels, -100), positions="answer")


def test_selection_metric_does_not_depend_on_the_batch_size(tokenizer):
    small, large = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    source, target = prompt_for(small, tokenizer, 0), prompt_for(large, tokenizer, 1)
    ids, mask, labels = batch(tokenizer, ("1+2=3", "a much longer row 45", "7"))
    rows = [{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1], "labels": labels[i:i + 1]} for i in range(3)]
    whole = [{"input_ids": ids, "attention_mask": mask, "labels": labels}]
    assert mean_transfer_loss(large, target, small, source, rows) == pytest.approx(
        mean_transfer_loss(large, target, small, source, whole), rel=1e-5)


def test_different_tokenizers_are_refused(tokenizer):
    check_same_tokenizer(tokenizer, tiny_tokenizer())
    other = tiny_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="one tokenizer"):
        check_same_tokenizer(tokenizer, other)



def test_prompt_of_another_hidden_size_is_refused(tokenizer, tmp_path):
    model = tiny_model("llama")
    prompt = prompt_for(model, tokenizer)
    folder = export_peft(prompt, tmp_path / "p", base_model_name_or_path="tiny")
    torch.testing.assert_close(load_prompt(folder, model).prompt_embeddings, prompt.prompt_embeddings)
    wider = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=96,
                                                         intermediate_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="96|64"):
        load_prompt(folder, wider)
    with pytest.raises(FileNotFoundError, match="no prompt"):
        load_prompt(tmp_path / "missing", model)
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.ckpt"):
        load_prompt(tmp_path / "corrupt.ckpt", model)


# ----------------------------------------------------------------- keep_layers
def test_keep_all_layers_is_the_same_model(model, tokenizer):
    ids, mask, _ = batch(tokenizer)
    n = model.config.get_text_config(decoder=True).num_hidden_layers
    same = keep_layers(model, list(range(n)))
    torch.testing.assert_close(same(input_ids=ids, attention_mask=mask).logits,
                               model(input_ids=ids, attention_mask=mask).logits)


def test_kept_layers_equal_a_model_built_with_them(tokenizer, tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2)
    big = AutoModelForCausalLM.from_config(config).eval()
    small = keep_layers(big)
    assert every_other_layer(5) == [0, 2, 4] and every_other_layer(4) == [0, 2, 3]
    assert small.config.num_hidden_layers == 3 and big.config.num_hidden_layers == 5
    oracle = AutoModelForCausalLM.from_config(LlamaConfig(**{**config.to_dict(), "num_hidden_layers": 3})).eval()
    state = big.state_dict()
    mapped = {k.replace(f"layers.{old}.", f"layers.{new}."): state[k.replace(f"layers.{new}.", f"layers.{old}.")]
              for new, old in enumerate([0, 2, 4]) for k in oracle.state_dict() if f"layers.{new}." in k}
    oracle.load_state_dict({**{k: v for k, v in state.items() if "layers." not in k}, **mapped})
    ids, mask, _ = batch(tokenizer)
    torch.testing.assert_close(small(input_ids=ids, attention_mask=mask).logits,
                               oracle(input_ids=ids, attention_mask=mask).logits)
    # KV-cached greedy decoding (layer_idx renumbered) equals the oracle's, and the copy saves and loads back.
    out = small.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    ref = oracle.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.tolist() == ref.tolist()
    small.save_pretrained(tmp_path / "small")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, small(input_ids=ids).logits)


def test_keep_layers_bad_input():
    with pytest.raises(ValueError, match="every_other"):
        resolve_keep("half", 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        resolve_keep([0, 4], 4)
    with pytest.raises(ValueError, match="strictly increasing"):
        resolve_keep([2, 1], 4)
    with pytest.raises(ValueError, match="no decoder layer"):
        resolve_keep([], 4)
