"""What every command shares: the consoles, the one error path, progress bars.

User errors (:class:`cohort.CohortError` and the few library errors below) become one line on
stderr, ``error: <message>``, and exit status 2; cohort's warnings become ``warning:`` lines
on stderr. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cohort.errors import CohortError, CohortWarning, PatientsFailedWarning

console = Console(emoji=False)  # ":end:" in a message stays text (rich made it 🔚)
err_console = Console(stderr=True, emoji=False)

F = TypeVar("F", bound=Callable)


def fail(msg: str) -> NoReturn:
    """Print ``error: msg`` on stderr and exit with status 2 (a user error)."""
    err_console.print(f"[bold red]error:[/] {escape(str(msg))}", soft_wrap=True)
    raise typer.Exit(code=2)


def warn(msg: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {escape(str(msg))}", soft_wrap=True)


def check_figure_path(path, overwrite: bool):
    """Refuse, before any work, a ``--plot`` path the figure may not be written to. Nothing is
    removed here: saving the new figure replaces cohort's old one, so a run refused or failed
    later keeps it."""
    from cohort.store import check_replaceable

    p = check_replaceable(path, overwrite=overwrite, flag="--plot")
    if p.is_dir():
        fail(f"--plot {path}: is a folder; give a .png file path")
    return p


def patient_table(rows: dict, columns: list[str], title: str, few: int = 3) -> Table:
    """Per-patient results (``rows[patient] = [cell per column]``, cells already text): for
    up to ``few`` patients one row per quantity (a few patients' columns fit an 80-column
    terminal, a dozen quantities side by side do not), else one row per patient with the
    cells folded rather than cut to "0.0…"."""
    if len(rows) <= few:
        table = Table("", *[f"patient {pid}" for pid in rows], title=title)
        for k, name in enumerate(columns):
            table.add_row(name, *[cells[k] for cells in rows.values()])
        return table
    table = Table("ID", *columns, title=title)
    for column in table.columns:
        column.overflow = "fold"
    for pid, cells in rows.items():
        table.add_row(str(pid), *cells)
    return table


def command(fn: F | None = None, *, timed: bool = False):
    """Wrap a command: cohort errors -> one stderr line and exit 2; cohort warnings -> stderr.

    ``timed``: after the command (also when it exits 1, e.g. a fit that did not converge),
    print where its time went on stderr (``time: startup ..., trace ..., compile ... (n of m
    from the cache), ...``); commands that print their own split (simulate, glucose) do not
    ask for it."""
    if fn is None:
        return functools.partial(command, timed=timed)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("always", CohortWarning)
            # failed patients are listed in the command's own summary, with their IDs
            warnings.simplefilter("ignore", PatientsFailedWarning)
            previous = warnings.showwarning

            def show(message, category, *rest, **kw):
                if issubclass(category, CohortWarning):
                    warn(str(message))
                else:
                    previous(message, category, *rest, **kw)

            warnings.showwarning = show
            try:
                if not timed:
                    return fn(*args, **kwargs)
                return _timed(fn, *args, **kwargs)
            except CohortError as exc:
                fail(str(exc))
            except OSError as exc:  # unreadable/unwritable files named by the user
                fail(_os_error(exc))
            except KeyboardInterrupt:  # Ctrl-C: say what is kept and how to go on (exit 130)
                err_console.print(
                    "\n[bold yellow]interrupted:[/] what was written so far is kept: simulate, "
                    "generate, glucose and trial finish their store when run again with "
                    "--resume; the twin commands (fit, cgm, update) reuse their finished blocks "
                    "when the same command is run again; an existing twin store keeps its "
                    "last complete update (an interrupted one's partial group is ignored and "
                    "replaced by the next)"
                )
                raise typer.Exit(130) from None
            finally:
                warnings.showwarning = previous

    return run


def _os_error(exc: OSError) -> str:
    """One line for an operating-system error: the file when the OS names it (a full disk
    printed ": No space left on device"), and what is kept when the disk is full."""
    import errno

    text = exc.strerror or str(exc)
    if exc.filename:
        text = f"{exc.filename}: {text}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text += (
            " (the disk or quota is full): free some space and run the same command again; "
            "a store's finished chunks are kept (--resume finishes it)"
        )
    return text


def _timed(fn: Callable, *args, **kwargs):
    from cohort.timing import describe, phases

    spent: dict = {}
    code = 0
    try:
        with phases() as spent:
            return fn(*args, **kwargs)
    except typer.Exit as stop:
        code = stop.exit_code
        raise
    except BaseException:  # an error: its own message is what the user needs
        code = -1
        raise
    finally:
        if code in (0, 1) and "wall" in spent:  # not after a usage error (exit 2)
            err_console.print(describe(spent, spent.get("alongside")), style="dim")


def progress() -> Progress:
    """A patients progress bar on stderr (stdout keeps the results)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} patients"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
