"""POST prompt transfer from Python: small model, private prompt, public transfer, public selection.

1. S = L with every other layer (:func:`softtok.prompts.shrink.keep_layers`), distilled on
   public text for a few steps (the recipe ``configs/soft_prompt/distil_small.yaml`` does this at scale);
2. P_S = a prompt tuned on S with the private task;
3. P_L = L's prompt trained by the transfer loss on public data; the checkpoint with the
   lowest held-out **public** transfer loss is kept;
4. the private task's greedy accuracy of L, S + P_S and L + P_L.

    python examples/prompt_transfer.py [--model smollm2-135m] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy

import torch

from softtok.answers import check_answer, extract_answer
from softtok.data.instruct import InstructDataModule
from softtok.distill import kl_distillation
from softtok.generation.prefill import plain_prefill
from softtok.models import load_model
from softtok.prompts import PromptTuningConfig, greedy_generate
from softtok.prompts.generate import eos_ids
from softtok.prompts.shrink import keep_layers
from softtok.prompts.transfer import mean_transfer_loss, transfer_loss

SYSTEM = "Compute step by step, then give the final answer."
EASY = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}


def accuracy(model, tokenizer, dm, prefill) -> float:  # noqa: ANN001
    right = total = 0
    for batch in dm.test_dataloader():
        out = greedy_generate(model, batch["prompt_ids"], batch["prompt_mask"], prefill=prefill,
                              max_new_tokens=48, eos_token_ids=eos_ids(model, tokenizer))
        for text, answer in zip(tokenizer.batch_decode(out, skip_special_tokens=True), batch["answers"],
                                strict=True):
            right += check_answer(extract_answer(text), answer)
            total += 1
    return right / total


def run(model_name: str = "smollm2-135m", steps: int = 20, tokenizer_name: str | None = None,
        public_task: str = "basic_arithmetic", private_task: str = "chain_sum") -> dict[str, float]:
    """The four steps above; returns the accuracies of L, S + P_S and L + P_L on the private task."""
    torch.manual_seed(0)
    large, tokenizer = load_model(model_name)
    large.requires_grad_(False)
    common = dict(tokenizer=tokenizer_name or model_name, system_prompt=SYSTEM, batch_size=4, eval_batch_size=16)
    public_config = {**EASY, "operators": ["+", "-"], "allow_parentheses": False, "allow_negation": False} \
        if public_task == "basic_arithmetic" else {}
    private_config = EASY if private_task == "chain_sum" else {}
    public = InstructDataModule(task=public_task, task_config=public_config, train_size=4 * steps, val_size=16,
                                test_size=0, seed=100, **common)
    private = InstructDataModule(task=private_task, task_config=private_config, train_size=4 * steps, val_size=0,
                                 test_size=32, seed=0, target="solution" if private_task == "chain_sum" else "answer",
                                 **common)
    for dm in (public, private):
        dm.setup("fit")

    # 1. The small model: every other layer, distilled on public text (KL at T = 2).
    small = keep_layers(large).train().requires_grad_(True)
    small.get_input_embeddings().requires_grad_(False)
    small.get_output_embeddings().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in small.parameters() if p.requires_grad], lr=2e-4)
    for batch in public.train_dataloader():
        keep = batch["attention_mask"].bool()
        with torch.no_grad():
            teacher = large(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[keep]
        student = small(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[keep]
        kl_distillation(student, teacher, 2.0).backward()
        opt.step()
        opt.zero_grad()
    small.eval().requires_grad_(False)

    # 2. The private prompt, tuned on S only.
    source = PromptTuningConfig(n_virtual=20, init_text=SYSTEM, truncate_init_text=True).build(small, tokenizer)
    opt = torch.optim.AdamW(source.parameters(), lr=3e-2)
    for batch in private.train_dataloader():
        source.loss(small, batch["input_ids"], batch["attention_mask"], batch["labels"]).backward()
        opt.step()
        opt.zero_grad()
    source.requires_grad_(False)

    # 3. Transfer on public data; select on the held-out public split.
    target = PromptTuningConfig(n_virtual=20, init_text=SYSTEM, truncate_init_text=True).build(large, tokenizer)
    target.load_state_dict(source.state_dict())  # same width: start from P_S
    opt = torch.optim.Adam(target.parameters(), lr=3e-3)
    held_out = list(public.val_dataloader())
    best = (mean_transfer_loss(large, target, small, source, held_out), copy.deepcopy(target.state_dict()))
    for step, batch in enumerate(public.train_dataloader(), start=1):
        transfer_loss(large, target, small, source, batch["input_ids"], batch["attention_mask"],
                      batch["labels"]).backward()
        opt.step()
        opt.zero_grad()
        if step % 5 == 0:
            score = mean_transfer_loss(large, target, small, source, held_out)
            if score < best[0]:
                best = (score, copy.deepcopy(target.state_dict()))
    target.load_state_dict(best[1])
    print(f"selected: held-out public transfer loss {best[0]:.4f}")

    # 4. The private task, read only now.
    with torch.no_grad():
        scores = {"L": accuracy(large, tokenizer, private, plain_prefill),
                  "S + P_S": accuracy(small, tokenizer, private, source),
                  "L + P_L (transferred)": accuracy(large, tokenizer, private, target)}
    for name, value in scores.items():
        print(f"{name:>22}: {100 * value:.1f}% of {private.sizes['test']} {private_task} problems")
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20, help="steps of each of the three trainings")
    args = parser.parse_args()
    run(args.model, args.steps)
