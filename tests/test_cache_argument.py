"""The KV cache reaches the model under the keyword its transformers takes (``cache`` or ``past_key_values``)."""

import torch
from tiny import tiny_model, tiny_tokenizer
from transformers import LlamaForCausalLM

from softtok.generation import GenerationConfig, SoftThinkingGenerator
from softtok.generation.prefill import cache_argument
from softtok.prompts import PrefixTuningConfig, greedy_generate


class OldSignatureLlama(LlamaForCausalLM):
    """A Llama whose forward has transformers 5.17's signature: ``past_key_values``, anything else in ``**kwargs``."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, logits_to_keep=0, **kwargs):
        assert "cache" not in kwargs, "a 5.17-style model would silently drop cache= (and decode without a KV cache)"
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, **kwargs)


def old_model():
    new = tiny_model("llama")
    old = OldSignatureLlama(new.config).eval()
    old.load_state_dict(new.state_dict())
    return new, old


def test_cache_argument_follows_the_signature():
    new, old = old_model()
    assert cache_argument(new) == "cache" and cache_argument(old) == "past_key_values"


def test_decoding_with_an_old_signature_model_matches():
    tok = tiny_tokenizer()
    new, old = old_model()
    enc = tok(["1+2=", "a longer prompt 7"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert greedy_generate(old, ids, mask, max_new_tokens=6) == greedy_generate(new, ids, mask, max_new_tokens=6)
    torch.manual_seed(0)
    prefix = PrefixTuningConfig(n_virtual=2, init_text="ab").build(new, tok)  # its prefix is made by a cached forward
    assert greedy_generate(old, ids, mask, prefill=prefix, max_new_tokens=6) == \
        greedy_generate(new, ids, mask, prefill=prefix, max_new_tokens=6)
    config = GenerationConfig(mode="soft", max_think_tokens=6, max_answer_tokens=2, think_end="</think>")
    prompts = ["1+2=", "abc"]
    a = SoftThinkingGenerator(old, tok, config).generate(prompts, seeds=[0, 1])
    b = SoftThinkingGenerator(new, tok, config).generate(prompts, seeds=[0, 1])
    assert [r.thinking + r.answer for r in a] == [r.thinking + r.answer for r in b]
