"""The ``softtok`` command: LightningCLI over softtok's LightningModules and DataModules.

``softtok fit|validate|test|predict -c configs/<recipe>.yaml``; ``--print_config`` shows
the resolved configuration. Model and data are chosen by ``class_path`` in the config,
so any LightningModule / LightningDataModule (softtok's or your own) can be used.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


def cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI; returns it, so tests and notebooks can inspect the trainer.

    Args:
        args: Command-line arguments (``sys.argv[1:]`` when ``None``).
        run: Run the subcommand; with ``False`` only parse and instantiate.
    """
    return LightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        # Write no config.yaml into the working directory; `--print_config` shows the resolved config.
        save_config_callback=None,
        args=args,
        run=run,
    )


def main() -> None:
    """Console entry point of ``softtok``."""
    cli()


if __name__ == "__main__":
    main()
