"""``cohort info | models``: describe a result store, fit result or twin store; list the
registered models or show one's states, parameters and outputs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from cohort.cli._common import command, console, err_console, fail, patient_table
from cohort.cli._fit_table import estimates_table


def _is_fit(path: Path) -> bool:
    """A fit result of `cohort fit` (netCDF, or a zarr store with a fit_summary group)."""
    if path.is_file():
        return path.suffix == ".nc"
    return (path / "fit_summary").is_dir()


def _fit_info(path: Path) -> None:
    """`cohort info` of a fit result: its settings and estimates (log-scale rows left out)."""
    from cohort.errors import CohortError
    from cohort.inference import load_fit

    try:
        summary = load_fit(path)["fit_summary"]
    except (OSError, KeyError, ValueError) as exc:
        if isinstance(exc, CohortError):
            raise
        fail(f"{path}: not a readable fit result ({exc})")
    a = summary.attrs
    console.print(
        f"[bold]{escape(str(path))}[/]: fit of {escape(str(a.get('model', '?')))} "
        f"({escape(str(a.get('method', '?')))}), {summary.sizes.get('subject', 0)} subjects"
    )
    rows = [v for v in summary.data_vars if summary[v].dims == ("parameter",)]
    frame = summary[rows].to_dataframe()
    if "estimate" in frame and "fixed" not in frame:  # saved before parameters could be held
        frame["fixed"] = False
    console.print(estimates_table(frame, "estimates", str(a.get("method", ""))))
    keys = ("error_model", "omega", "approximation", "n_observations", "ofv", "converged",
            "diagnostic_verdict", "model_hash", "cohort_version")  # fmt: skip
    for key in keys:
        if key in a and str(a[key]) != "":
            console.print(f"  {key}: {escape(str(a[key]))}")


def _is_twin_store(path: Path) -> bool:
    """A twin store of `cohort twin` (its root's kind, read from the zarr metadata)."""
    import json

    meta = path / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {}) if meta.is_file() else {}
    except (OSError, ValueError):
        return False
    return attrs.get("kind") == "cohort-twins"


def _twin_info(path: Path) -> None:
    """`cohort info` of a twin store: model, prior, patients, every stored update and the
    current estimates."""
    from cohort.twin import open_twins
    from cohort.twin.store import update_group, update_log

    tw = open_twins(path)
    size = _disk_bytes(path)
    on_disk = "" if size is None else f" ({_human_bytes(size)} on disk)"
    console.print(
        f"[bold]{escape(str(path))}[/]: twins of {tw.n:,} patient(s), model "
        f"{escape(tw.prior.model.name)}, prior {escape(tw.prior.name)}, method {tw.method}"
        + on_disk
    )
    log = update_log(path)
    branched = any(e["from"] is not None and e["from"] != e["update"] - 1 for e in log)
    table = Table("update", *(["from"] if branched else []), "step", "records seen", "seconds")
    for entry in log:
        seen = entry.get("rows")
        if seen is None:
            seen = f"{int(sum(entry.get('n_observations', []))):,} observations"
        else:
            seen = f"{int(seen):,} rows"
        seconds = entry.get("seconds")
        parent = entry["from"]
        table.add_row(
            str(entry["update"]),
            *([("" if parent is None else str(parent))] if branched else []),
            str(entry.get("step", entry.get("method", ""))),
            str(seen),
            "" if seconds is None else f"{float(seconds):.1f}",
        )
    console.print(table)
    ind = tw.individual()
    if hasattr(tw, "replay"):  # CGM twins: posterior medians (their intervals: `twin cgm`)
        ind = ind[[c for c in ind.columns if f"{c}_q05" in ind.columns] + ["mard", "ok"]]
    shown = ind.head(10)
    rows = {
        pid: [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        for pid, row in shown.iterrows()
    }
    est = patient_table(
        rows, [str(c) for c in shown.columns], f"current estimates (update {log[-1]['update']})"
    )
    if len(ind) > 10:
        est.caption = f"first 10 of {len(ind)} patients"
    console.print(est)
    console.print(f"  usable posteriors: {int(tw.ok.sum())}/{tw.n}")
    if (path / update_group(len(log))).is_dir():  # written after the last commit: not a result
        console.print(
            f"  [yellow]{update_group(len(log))}: the partial group of an interrupted update, "
            "ignored (the next update replaces it)[/]"
        )


def _human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


def _disk_bytes(store: Path) -> int | None:
    """Bytes of the files under a local store (None for a URL or an unreadable folder)."""
    try:
        return sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
    except OSError:
        return None


@command
def info(
    store: Path = typer.Argument(..., help="result store, fit result or twin store of cohort"),
):
    """Describe a result store (sizes, variables with units, provenance, status counts), a
    fit result of `cohort fit` (settings and estimates) or a twin store (updates, estimates)."""
    import pandas as pd

    from cohort.store import open_result

    if _is_fit(store):
        return _fit_info(store)
    if _is_twin_store(store):
        return _twin_info(store)
    ds = open_result(store)
    size = _disk_bytes(store)
    on_disk = "" if size is None else f" ({_human_bytes(size)} on disk)"
    console.print(
        f"[bold]{escape(str(store))}[/]: "
        + ", ".join(f"{'batches' if k == 'chunk' else k}={v:,}" for k, v in ds.sizes.items())
        + on_disk
    )
    table = Table("variable", "dims", "units", "description")

    def order(item):  # trajectories, then per-patient results, parameters, bookkeeping
        name, var = item
        return ("time" not in var.dims, name != "status", name == "chunk_done", name)

    for name, var in sorted(ds.data_vars.items(), key=order):
        table.add_row(
            name, ",".join(var.dims), var.attrs.get("units", ""), var.attrs.get("long_name", "")
        )
    for name, var in ds.coords.items():  # e.g. ID: the dosing records' patient IDs
        if name not in ds.dims:
            description = var.attrs.get("long_name", "") + " (coordinate)"
            table.add_row(name, ",".join(var.dims), var.attrs.get("units", ""), description)
    console.print(table)
    for key in (
        "model",
        "population",
        "dosing",
        "model_hash",
        "method",
        "solver_settings",
        "dtype",
        "seed",
        "population_seed",  # a simulation of a generated population: the population's seed
        "acceptance_rate",
        "rejected_by",
        "cohort_version",
        "created",
        "spec_hash",
    ):
        if key in ds.attrs:
            value = ds.attrs[key]
            shown = f"{value:.1%}" if key == "acceptance_rate" else str(value)
            console.print(f"  {key}: {escape(shown)}")
    if "status" in ds:
        from cohort.engine.status import STATUS_MEANINGS

        counts = pd.Series(ds["status"].values).value_counts().sort_index()
        console.print(
            "  status: "
            + ", ".join(
                f"{STATUS_MEANINGS.get(int(k), 'not computed')}={int(c):,}"
                for k, c in counts.items()
            )
        )
    if "incomplete" in ds.attrs:
        err_console.print(f"[bold yellow]INCOMPLETE:[/] {ds.attrs['incomplete']}")
    else:  # a trial store: its tables are written after the simulation
        from cohort.trial import groups

        if missing := groups.unfinished(store):
            msg = groups.incomplete_message(store, missing)
            err_console.print(f"[bold yellow]INCOMPLETE:[/] {escape(msg)}")


@command
def models(name: str = typer.Argument(None, help="show one model in detail")):
    """List the registered models, or the states/parameters/units of one."""
    from cohort.models import available as available_models
    from cohort.models import get as get_model

    if name is None:
        table = Table("model", "states", "outputs", "description")
        for key in available_models():
            m = get_model(key)
            table.add_row(key, ", ".join(m.state_names), ", ".join(m.output_names), m.description)
        console.print(table)
        return
    m = get_model(name)
    console.print(f"[bold]{m.name}[/]: {escape(m.description)}")
    st = Table("state", "units", "description", title="states")
    for s in m.states:
        st.add_row(s.name, escape(s.units), escape(s.description))
    pt = Table("parameter", "units", "default", "range", "description", title="parameters")
    for q in m.parameters:
        pt.add_row(
            q.name,
            escape(q.units),
            f"{q.default:g}",
            escape(f"[{q.lower:g}, {q.upper:g}]"),
            escape(q.description),
        )
    ot = Table("output", "units", "description", title="outputs")
    for o in m.outputs:
        ot.add_row(o.name, escape(o.units), escape(o.description))
    console.print(st, pt, ot)
    console.print(f"dose targets: {', '.join(m.dose_targets)}")
