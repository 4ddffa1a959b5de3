"""The ``softtok`` command: LightningCLI over softtok's LightningModules and DataModules.

``softtok fit|validate|test|predict -c configs/<recipe>.yaml``; ``--print_config`` shows
the resolved configuration. Model and data are chosen by ``class_path`` in the config,
so any LightningModule / LightningDataModule (softtok's or your own) can be used.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None) -> None:
    """Run the CLI (``args`` defaults to ``sys.argv[1:]``)."""
    LightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
