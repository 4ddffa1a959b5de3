"""Export a trained soft prompt from a Lightning checkpoint to a PEFT adapter folder.

Usage::

    python -m softtok.prompts.export CKPT OUTDIR [--overwrite] [--base-model NAME]

Works without loading the base model: the checkpoint carries the prompt's method,
configuration and the model's shapes. Prompt tuning and prefix tuning (folded) export;
instruction-aware prompts have no PEFT equivalent and are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from softtok.prompts.checkpoint import prompt_from_checkpoint
from softtok.prompts.peft_io import export_peft


def main(argv: list[str] | None = None) -> Path:
    """Parse ``argv`` and export; returns the output folder."""
    parser = argparse.ArgumentParser(prog="python -m softtok.prompts.export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="Lightning .ckpt written by SoftPromptModule")
    parser.add_argument("out_dir", help="adapter folder to write (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace the adapter files of a non-empty folder")
    parser.add_argument("--base-model", default=None,
                        help="base_model_name_or_path to record (default: the model the prompt was trained on)")
    args = parser.parse_args(argv)
    try:
        prompt = prompt_from_checkpoint(args.checkpoint)
        out = export_peft(prompt, args.out_dir, base_model_name_or_path=args.base_model, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"exported {prompt.method} ({prompt.num_parameters()} parameters) to {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
