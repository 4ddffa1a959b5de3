"""Continuous-CoT RL with the LightningModule from research code: a custom reward, a Trainer, no CLI.

``ContinuousCoTModule`` takes reward callables directly: here the built-in correctness
reward plus a reward written below (a bonus for naming the answer on one short line).
The Trainer brings checkpoints, logging and, on several devices, ``strategy="ddp"``.

    python examples/continuous_cot_lightning.py [--mode soft|fuzzy|hard] [--steps 4] [--group 4]
"""

import argparse

import lightning as L

from softtok.data import ReasoningDataModule
from softtok.modules import ContinuousCoTModule


def one_line_answer(prompts, completions, references):
    """A custom reward: 0.1 when the text after the last 'Final answer:' fits on one short line."""
    out = []
    for text in completions:
        _, found, tail = text.rpartition("Final answer:")
        out.append(0.1 if found and len(tail.strip()) <= 12 else 0.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="soft", choices=["hard", "soft", "fuzzy"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--group", type=int, default=4, help="rollouts per prompt (G)")
    parser.add_argument("--think", type=int, default=48, help="CoT budget in tokens")
    opts = parser.parse_args()

    L.seed_everything(7)
    module = ContinuousCoTModule(
        "smollm2-135m",
        rollout={"mode": opts.mode, "group_size": opts.group, "think_end": "Final answer:",
                 "max_think_tokens": opts.think, "max_answer_tokens": 8, "stop_strings": ["\n"]},
        rewards=["correctness", one_line_answer],  # names, import paths or callables
        lr=1e-5, warmup_steps=1, eval_modes=["hard_greedy", "soft_greedy"],
    )
    data = ReasoningDataModule(task="chain_sum", task_config={"min_terms": 2, "max_terms": 2, "max_digits": 1},
                               size=40, holdout=4, batch_size=2)
    trainer = L.Trainer(max_steps=opts.steps, accelerator="auto", logger=False, enable_checkpointing=False,
                        num_sanity_val_steps=0, limit_val_batches=0, enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    print(f"last step: reward {float(metrics['train/reward_mean']):.3f}, "
          f"CoT {float(metrics['train/cot_tokens']):.1f} tokens, "
          f"think_end rate {float(metrics['train/think_end_rate']):.2f}")
    trainer.test(module, datamodule=data)
    print({k: round(float(v), 3) for k, v in trainer.callback_metrics.items() if k.startswith("test/")
           and k.rsplit("/", 1)[1] in ("accuracy", "mean_think_tokens")})


if __name__ == "__main__":
    main()
