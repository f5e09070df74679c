"""Paths and status lines shared by the ``cohort twin`` commands: every output checked before
any work, report files claimed one by one, the crash checkpoint beside a twin store."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from cohort.cli._common import console, fail


def report_folder(path: Path | None, overwrite: bool, flag: str = "--report") -> Path | None:
    """``--report`` (or the command's ``flag`` for that folder) checked before any work; the
    folder is made by the first :func:`report_file`, so a command that fails leaves nothing
    behind."""
    from cohort.store import report_directory

    if path is None:
        return None
    return report_directory(path, overwrite=overwrite, flag=flag, create=False)


def report_file(folder: Path, name: str, overwrite: bool, flag: str = "--report") -> Path:
    from cohort.store import report_directory
    from cohort.store.safety import claim_file

    report_directory(folder, overwrite=overwrite, flag=flag)
    return claim_file(folder, name, overwrite=overwrite, flag=flag)


def before_identifying(
    data: Path, out: Path, report: Path | None, overwrite: bool, report_names: tuple = ()
):
    """Every check on the paths before any work (not after hours of NUTS): the records exist,
    ``out`` is a ``.zarr`` twin store that may be written, the report folder is cohort's and
    its files ``report_names`` may be written (an existing one was refused only after the
    fit, a probe). Returns the report folder (or None)."""
    from cohort.store import check_replaceable

    if not data.is_file():
        fail(f"no such file {data}")
    if Path(out).suffix != ".zarr":
        fail(f"--out {out}: a twin store is a .zarr directory, e.g. twins.zarr")
    from cohort.twin.store import interrupted_first_save

    # the same command after a crash before the store's first commit writes it again
    path = check_replaceable(out, overwrite=overwrite, resume=interrupted_first_save(out))
    if overwrite and isinstance(path, Path):  # a user's file in the store: named now, not later
        from cohort.store.safety import check_strays

        check_strays(path)
    folder = report_folder(report, overwrite)
    check_report_files(folder, report_names, overwrite)
    return folder


def check_report_files(folder: Path | None, names, overwrite: bool) -> None:
    """Refuse, before any work, a file ``names`` of ``--report`` that may not be replaced."""
    from cohort.store import check_replaceable

    for name in names if folder is not None else ():
        check_replaceable(folder / name, overwrite=overwrite, flag="--report")


def checkpoint_for(out: Path):
    """Where finished blocks of patients are kept while twins for ``out`` are computed
    (``<name>.blocks.zarr`` beside it), until the command has saved them (it then calls the
    checkpoint's ``remove``): rerunning the same command after a crash, even one during the
    save, computes only the blocks still missing."""
    from cohort.twin.checkpoint import KeptCheckpoint, is_checkpoint

    path = out.with_name(out.name.removesuffix(".zarr") + ".blocks.zarr")
    if is_checkpoint(path):  # (anything else there is refused when the blocks are kept)
        console.print(
            f"{path}: blocks of an interrupted run; those computed from the same inputs are reused"
        )
    return KeptCheckpoint(path)


def status_line(tw, seconds: float, path: Path) -> str:
    bad = int((~tw.ok).sum())
    line = f"{tw.n} twins ({tw.method}) in {seconds:.1f} s -> [bold]{escape(str(path))}[/]"
    if bad:
        line += f"   [red]{bad} without a usable posterior[/] (see the ok column)"
    if tw.samples is not None:
        s = tw.samples
        line += (
            f"\nNUTS: max R-hat {s.rhat.max():.4f}, min bulk ESS {s.ess_bulk.min():.0f}, "
            f"{int(s.divergences.sum())} divergences; converged (R-hat < 1.01, ESS > 400, "
            f"<= 1 % divergent): {int(s.converged.sum())}/{tw.n}"
        )
        apart = int((s.separated & ~s.converged).sum())
        if apart:
            line += (
                f"\n[yellow]{apart} of them with chains in separate modes[/]: the records leave "
                "several explanations that the chains do not cross; longer runs rarely join "
                "them, more records (another day) or a narrower prior does"
            )
    return line
