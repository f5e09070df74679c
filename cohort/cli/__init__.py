"""The ``cohort`` command line (typer + rich). This module builds the app and is the only
importer of the command modules; they share :mod:`cohort.cli._common` and the private
helper modules (``_inputs``, ``_summary``, ``_cache``, ``_twin_common``, ``_cgm_report``),
never each other."""

from __future__ import annotations

import typer

from cohort.cli import fit, generate, glucose, info, simulate, trial, twin, twin_cgm, twin_examples
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
    """Before JAX starts: one CPU device per core, so batches are split over all of them (no
    effect on GPU backends or when XLA_FLAGS sets a device count; ``fit`` chooses its own, one
    per MCMC chain), and the persistent compilation cache, so a repeated command does not
    compile again (``COHORT_CACHE_DIR`` moves it, ``COHORT_NO_COMPILE_CACHE=1`` turns it off).
    Neither imports JAX, so help and errors stay fast."""
    import os

    from cohort.devices import NO_CACHE_ENV, enable_compile_cache, request_cpu_devices

    if os.environ.get(NO_CACHE_ENV, "") not in ("1", "true", "yes"):
        try:
            enable_compile_cache()
        except OSError:  # an unwritable cache folder must not stop the command
            pass
        # JAX does not cache programs with host callbacks, which equinox's runtime checks add
        # by default; as NaNs instead, a failed check marks the patient's status (non-finite)
        # like any other failed solve, and the program is cacheable.
        os.environ.setdefault("EQX_ON_ERROR", "nan")
    if ctx.invoked_subcommand != "fit":
        request_cpu_devices()


for _module, _names in (
    (simulate, ("demo", "simulate")),
    (generate, ("generate",)),
    (info, ("info", "models")),
    (fit, ("fit",)),
    (glucose, ("glucose",)),
    (trial, ("trial", "report")),
):
    for _name in _names:
        app.command(_name)(getattr(_module, _name))
for _module, _names in ((twin_examples, ("example", "mipd")), (twin_cgm, ("cgm",))):
    for _name in _names:
        twin.app.command(_name)(getattr(_module, _name))
app.add_typer(twin.app, name="twin")


def main() -> None:
    """The ``cohort`` console script: the app, then a quick exit.

    When a command has returned, everything it writes is on disk (stores, caches) and every
    atexit hook has run, yet tearing the interpreter down still took 0.4-0.5 s on 2 cores
    (deallocating JAX's and XLA's objects one by one): 15 % of a repeated ``cohort
    simulate``. So the exit hooks are run and the standard streams flushed here, then the
    process ends with ``os._exit``. If a thread other than the main one is still alive (a
    non-daemon thread the normal exit would wait for), the process leaves the normal way."""
    import atexit
    import os
    import sys
    import threading

    keep_interrupts()
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message") semantics
        sys.stderr.write(f"{code}\n")
        code = 1
    main_thread = threading.main_thread()
    waiting = [t for t in threading.enumerate() if t is not main_thread and not t.daemon]
    if waiting:
        sys.exit(code)
    atexit._run_exitfuncs()  # what a normal exit runs (logging, coverage, zarr's IO loop)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (e.g. `cohort models | head`)
            pass
    os._exit(code)


def keep_interrupts() -> None:
    """Make a Ctrl-C that Python would drop count. A ``KeyboardInterrupt`` raised while a
    garbage-collection callback or a finaliser runs (JAX registers both; a long XLA compile
    spends its Python time in them) is "unraisable": Python prints it and goes on, and the
    command ran to the end as if nothing was pressed. The hook raises it again in the main
    thread, where the command's handler keeps what was written and exits 130: from a timer
    thread 10 ms later, since raised inside the hook it would be dropped again."""
    import _thread
    import sys
    import threading

    previous = sys.unraisablehook

    def hook(args) -> None:
        if args.exc_type is not None and issubclass(args.exc_type, KeyboardInterrupt):
            timer = threading.Timer(0.01, _thread.interrupt_main)
            timer.daemon = True
            timer.start()
        else:
            previous(args)

    sys.unraisablehook = hook


__all__ = ["app", "keep_interrupts", "main"]
