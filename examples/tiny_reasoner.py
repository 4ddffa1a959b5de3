"""The tiny reasoning model from Python: train it on worked sums, then RL it, with no CLI.

The two recipes (``configs/continuous_cot/pretrain_tiny.yaml`` and ``tiny_reasoner.yaml``)
as plain objects: ``SFTModule`` trains a new GPT-2 of ``softtok.tiny.TINY_ARCHITECTURE`` on
worked chain_sum solutions, ``SavePretrained`` writes it as a Hugging Face folder, and
``ContinuousCoTModule`` takes that folder as its model for a few RL steps.

    python examples/tiny_reasoner.py [--sft-steps 1200] [--rl-steps 20] [--mode soft] [--out outputs/examples/tiny]
"""

import argparse

import lightning as L

from softtok.callbacks import SavePretrained
from softtok.data import InstructDataModule, ReasoningDataModule
from softtok.modules import ContinuousCoTModule, SFTModule
from softtok.tiny import TINY_ARCHITECTURE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=1200)
    parser.add_argument("--rl-steps", type=int, default=20)
    parser.add_argument("--mode", default="soft", choices=["hard", "soft", "fuzzy"])
    parser.add_argument("--out", default="outputs/examples/tiny")
    args = parser.parse_args()
    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)

    # 1. Supervised training from scratch on worked solutions (4 min for the recipe's 1,200 steps).
    L.seed_everything(0)
    sums = {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 1}
    data = InstructDataModule(tokenizer="tiny-reasoner", task="chain_sum", task_config=sums, target="solution",
                              train_size=32 * args.sft_steps, val_size=200, test_size=0, batch_size=32,
                              eval_batch_size=200)
    sft = SFTModule(architecture=TINY_ARCHITECTURE, warmup_steps=min(30, args.sft_steps // 10))
    trainer = L.Trainer(max_steps=args.sft_steps, limit_val_batches=0, enable_checkpointing=False,
                        callbacks=[SavePretrained(f"{args.out}/base")], **quiet)
    trainer.fit(sft, datamodule=data)
    scores = L.Trainer(**quiet).validate(sft, datamodule=data, verbose=False)[0]
    print(f"after SFT: greedy accuracy {scores['val/accuracy']:.3f}, NLL {scores['val/nll']:.3f} nats/token")

    # 2. RL of the saved model: hard, soft or fuzzy chain of thought (RLOO, the paper's loss).
    L.seed_everything(1)
    problems = ReasoningDataModule(task="chain_sum", task_config={**sums, "min_terms": 3}, size=400, holdout=50,
                                   seed=101, batch_size=8)
    rollout = {"mode": args.mode, "group_size": 8, "think_end": "Final answer:", "max_think_tokens": 48,
               "max_answer_tokens": 6, "stop_strings": ["\n"]}
    rl = ContinuousCoTModule(f"{args.out}/base", rollout=rollout, rewards=["correctness"], system_prompt=None,
                             lr=3e-5, warmup_steps=2, eval_modes=["hard_greedy"])
    trainer = L.Trainer(max_steps=args.rl_steps, val_check_interval=args.rl_steps, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, enable_checkpointing=False,
                        callbacks=[SavePretrained(f"{args.out}/{args.mode}")], **quiet)
    trainer.fit(rl, datamodule=problems)
    metrics = trainer.callback_metrics
    print(f"after {args.rl_steps} RL steps ({args.mode}): last reward {float(metrics['train/reward_mean']):.3f}, "
          f"held-out greedy pass@1 {float(metrics['val/hard_greedy/pass@1']):.3f}; policy in {args.out}/{args.mode}")


if __name__ == "__main__":
    main()
