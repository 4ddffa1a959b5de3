"""The ``softtok`` command: LightningCLI over softtok's LightningModules and DataModules.

``softtok fit|validate|test|predict -c configs/<recipe>.yaml``; ``--print_config`` shows
the resolved configuration. Model and data are chosen by ``class_path`` in the config,
so any LightningModule / LightningDataModule (softtok's or your own) can be used.

``softtok describe -c configs/interpret/<recipe>.yaml`` reads a soft prompt or a
predictions file's concept tokens (:mod:`softtok.interpret.describe`); it is dispatched
before LightningCLI, which handles every other subcommand.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI


class SofttokCLI(LightningCLI):
    """LightningCLI that checks a ``--ckpt_path`` against the model before the run starts.

    A module with a ``check_checkpoint(path)`` method (e.g.
    :class:`~softtok.modules.continuous_cot.ContinuousCoTModule`) gets the checkpoint
    file first, so a checkpoint of another model fails before any weights load.
    """

    def _check_checkpoint(self) -> None:
        path = self.config[self.subcommand].get("ckpt_path")
        check = getattr(self.model, "check_checkpoint", None)
        if path and callable(check) and path not in ("last", "best", "hpc", "registry"):
            check(path)

    before_fit = before_validate = before_test = before_predict = _check_checkpoint


def cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI; returns it, so tests and notebooks can inspect the trainer.

    Args:
        args: Command-line arguments (``sys.argv[1:]`` when ``None``).
        run: Run the subcommand; with ``False`` only parse and instantiate.
    """
    return SofttokCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        # Write no config.yaml into the working directory; `--print_config` shows the resolved config.
        save_config_callback=None,
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``softtok`` (``argv``: the arguments after ``softtok``; default ``sys.argv[1:]``)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["describe"]:
        from softtok.interpret.describe import main as describe_main

        describe_main(args[1:])
        return
    cli(argv)


if __name__ == "__main__":
    main()
