"""Train a soft prompt in a few lines of research code: no CLI, no Lightning.

Prompt tuning on the embedded SmolLM2-135M-Instruct for easy chain_sum problems, trained
to write the partial sums (``82 + 88 = 170`` / ``170 - 66 = 104`` / ``Final answer: 104``),
then greedy answers with the prompt (injected at prefill, KV cache), then a PEFT export.

    python examples/train_soft_prompt.py --steps 30            # ~1-2 minutes on 2 CPU cores
    python examples/train_soft_prompt.py --method iapt         # instruction-aware prompts instead
"""

from __future__ import annotations

import argparse

import torch

from softtok.answers import extract_answer
from softtok.data.instruct import InstructDataModule
from softtok.models import load_model
from softtok.prompts import (
    IAPTConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    export_peft,
    greedy_generate,
    mark_only_prompt_trainable,
)

SYSTEM = "Compute step by step, then give the final answer."
CONFIGS = {  # method -> (prompt, learning rate), as in docs/results_soft_prompts.md
    "prompt_tuning": (PromptTuningConfig(n_virtual=20, init_text=SYSTEM), 0.03),
    "prefix_tuning": (PrefixTuningConfig(n_virtual=10, init_text="Compute step by step."), 0.01),
    "iapt": (IAPTConfig(n_virtual=4, init_text="Compute step by step.", bottleneck=16), 0.003),
}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--method", choices=list(CONFIGS), default="prompt_tuning")
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
parser.add_argument("--export", default=None, help="write a PEFT adapter folder here (prompt/prefix tuning)")
args = parser.parse_args()
torch.manual_seed(0)

# 1. A frozen base model, a prompt, and chat-formatted data with labels on the worked solution only.
model, tokenizer = load_model("smollm2-135m")
config, lr = CONFIGS[args.method]
prompt = config.build(model, tokenizer)
mark_only_prompt_trainable(model, prompt)  # base model frozen, prompt trainable
data = InstructDataModule(tokenizer=tokenizer, task="chain_sum", batch_size=8, train_size=8 * args.steps, test_size=16,
                          task_config={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
                          system_prompt=SYSTEM, target="solution")

# 2. The training loop: the prompt computes the loss on the labelled (solution) tokens itself.
optimizer = torch.optim.AdamW(prompt.parameters(), lr=args.lr or lr)
for step, batch in enumerate(data.train_dataloader()):
    loss = prompt.loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if step % 5 == 0:
        print(f"step {step:3d}  loss {loss.item():.3f}")

# 3. Greedy answers with the prompt (any PrefillBuilder works here, e.g. in SoftThinkingGenerator).
batch = next(iter(data.test_dataloader()))
out = greedy_generate(model, batch["prompt_ids"], batch["prompt_mask"], prefill=prompt, max_new_tokens=48,
                      eos_token_ids=[tokenizer.eos_token_id])
texts = tokenizer.batch_decode(out, skip_special_tokens=True)
correct = [data.score(r, extract_answer(t), "test") for r, t in zip(batch["records"], texts, strict=True)]
for record, text in list(zip(batch["records"], texts, strict=True))[:4]:
    print(f"{record['question'][-20:]!r:>24} -> {text!r} (reference {record['answer']})")
print(f"exact match on {len(texts)} held-out problems: {sum(correct)}/{len(texts)}")

# 4. Share it: PEFT's format (PeftModel.from_pretrained loads it with the same logits).
if args.export:
    print("exported to", export_peft(prompt, args.export))
