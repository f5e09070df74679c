"""The ``cohort`` command line (typer + rich). This module builds the app and is the only
importer of the command modules; they share :mod:`cohort.cli._common` and nothing else."""

from __future__ import annotations

import typer

from cohort.cli import fit, glucose, simulate, trial
from cohort.cli._common import console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts are plain: "[h]" and "[default: ...]" stay visible
    help="cohort: GPU-accelerated virtual-patient cohorts.",
)


def _version(value: bool) -> None:
    if value:
        from cohort._version import __version__

        console.print(f"cohort {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Give JAX one CPU device per core before any command runs, so batches are split over
    all of them (no effect on GPU backends or when XLA_FLAGS sets a device count). ``fit``
    chooses its own device count (one per MCMC chain)."""
    if ctx.invoked_subcommand == "fit":
        return
    from cohort.engine.devices import use_cpu_cores

    use_cpu_cores()


for _module, _names in (
    (simulate, ("demo", "simulate", "generate", "info", "models")),
    (fit, ("fit",)),
    (glucose, ("glucose",)),
    (trial, ("trial", "report")),
):
    for _name in _names:
        app.command(_name)(getattr(_module, _name))

__all__ = ["app"]
