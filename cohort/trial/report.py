"""``report``: a Markdown (or self-contained HTML) trial report with tables and PNG figures.

Markdown writes the figures next to the report (``<stem>_figures/``); HTML embeds them as
base64 data so the single file opens anywhere. Sections: design, power per comparison (with
Monte Carlo CIs), group-sequential boundaries, PTA by dose, bands per arm, forest plot, power
curve, Kaplan–Meier curves for time-to-event endpoints, optional sample-size and escalation
tables.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.errors import OutputError, StoreError
from cohort.store import check_replaceable, claim_file, report_directory
from cohort.store.safety import REPORT_HEADER
from cohort.trial import groups
from cohort.trial.analysis import Analysis, analyze
from cohort.trial.run import TrialResult, open_trial

MAX_BAND_PATIENTS = 20_000


def _md_table(df: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}"
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _figures(
    result: TrialResult, analysis: Analysis, claim, sizes: pd.DataFrame | None
) -> list[tuple[str, Path]]:
    from cohort.trial import figures  # matplotlib only when a report is drawn

    spec, out = result.spec, []
    arm_all = np.asarray(result.patients["arm"].values)
    rows = np.asarray(result.patients["sim_row"].values)[:MAX_BAND_PATIENTS]
    order = np.argsort(rows)  # zarr-backed indexing wants increasing rows
    take, arm = rows[order], arm_all[:MAX_BAND_PATIENTS][order]
    times = np.asarray(result.simulation["time"].values)
    time_units = result.simulation["time"].attrs.get("units", "")
    dose_units = _dose_units(spec)
    names = list(spec.arm_names)
    for o in sorted({e.output for e in spec.endpoints if e.output}):
        v = np.asarray(result.simulation[o][take].values, float)
        units = result.simulation[o].attrs.get("units", "")
        out.append(
            (
                f"{o} by arm",
                figures.bands(
                    times, v, arm, names, f"{o} [{units}]", claim(f"bands_{o}.png"), time_units
                ),
            )
        )
    if analysis.replicates.sizes.get("comparison", 0):
        out.append(
            (
                "Forest plot of effects",
                figures.forest(
                    analysis.summary, analysis.replicates, claim("forest.png"), _units(result)
                ),
            )
        )
    s = analysis.summary
    if sizes is not None and len(sizes):
        for comp, g in sizes.groupby("comparison", sort=False):
            path = claim(f"power_n_{len(out)}.png")
            out.append(
                (
                    f"Power vs N: {comp}",
                    figures.power_curve(
                        g["n"].values,
                        g["power"].values,
                        g["power_mc_low"].values,
                        g["power_mc_high"].values,
                        "total sample size",
                        spec.power_target,
                        path,
                    ),
                )
            )
    elif len(s):
        prim = s[s["primary"]]
        if len(prim) > 1:
            out.append(
                (
                    "Power of the primary test by dose",
                    figures.power_curve(
                        prim["dose"].values,
                        prim["power"].values,
                        prim["power_mc_low"].values,
                        prim["power_mc_high"].values,
                        f"dose [{dose_units}]" if dose_units else "dose",
                        spec.power_target,
                        claim("power_dose.png"),
                        connect=False,
                    ),
                )
            )
    if len(analysis.pta):
        out.append(
            ("Dose–PTA curve", figures.pta_curve(analysis.pta, claim("pta.png"), dose_units))
        )
    for e in spec.endpoints:
        if e.type == "tte":
            d = np.asarray(result.patients[e.name].values)
            ev = np.asarray(result.patients[f"{e.name}_event"].values)
            path = claim(f"km_{e.name}.png")
            out.append(
                (
                    f"Kaplan–Meier: {e.name}",
                    figures.kaplan_meier(
                        d, ev, arm_all, names, e.name, path, time_units, spec.replicates
                    ),
                )
            )
    return out


def _time_unit(result: TrialResult) -> str:
    return result.simulation["time"].attrs.get("units", "") or "time unit"


def _dose_units(spec) -> str:
    """Units of the amount in the model's first dose compartment (e.g. mg)."""
    try:
        from cohort.models import get

        model = get(spec.model)
        return model.units().get(model.dose_targets[0], "")
    except Exception:  # noqa: BLE001 - a label only: never fail a report over it
        return ""


def _units(result: TrialResult) -> dict[str, str]:
    """Units of each endpoint that has them in the trial's patient table."""
    out = {}
    for e in result.spec.endpoints:
        if e.name in result.patients:
            out[e.name] = result.patients[e.name].attrs.get("units", "")
    return out


def _design_table(result: TrialResult) -> pd.DataFrame:
    spec = result.spec
    arm = np.asarray(result.patients["arm"].values)
    return pd.DataFrame(
        {
            "arm": list(spec.arm_names),
            "dose": [a.dose for a in spec.arms],
            "ratio": list(spec.ratio),
            "mean patients / trial": [
                float(np.sum(arm == i)) / spec.replicates for i in range(len(spec.arms))
            ],
        }
    )


STORED_TABLES = ("sample_sizes", "escalation", "dose_pta")


def save_tables(out: str | Path, **tables: pd.DataFrame | None) -> None:
    """Keep the tables computed beside a trial (sample-size search, escalation, dose sweep)
    as groups of its store, with their attrs, so that ``cohort report STORE`` shows them."""
    import xarray as xr

    for name, df in tables.items():
        if name not in STORED_TABLES or df is None:
            continue
        ds = xr.Dataset.from_dataframe(df.reset_index(drop=True))
        ds.attrs = {k: v for k, v in df.attrs.items() if isinstance(v, (int, float, str))}
        ds.to_zarr(str(out), group=name, mode="w", consolidated=False)
        groups.mark_done(out, name)


def load_tables(path: str | Path) -> dict[str, pd.DataFrame]:
    """The tables :func:`save_tables` kept in the trial store at ``path`` (absent ones left out)."""
    import xarray as xr

    out = {}
    for name in STORED_TABLES:
        try:
            ds = xr.open_zarr(str(path), group=name, consolidated=False, chunks=None)
        except Exception:  # noqa: BLE001 - zarr raises several types for a missing group
            continue
        df = ds.to_dataframe().reset_index(drop=True)
        df.attrs = dict(ds.attrs)
        out[name] = df
    return out


def report(
    result: TrialResult | str | Path,
    path: str | Path,
    analysis: Analysis | None = None,
    sample_sizes: pd.DataFrame | None = None,
    escalation: pd.DataFrame | None = None,
    dose_pta: pd.DataFrame | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the report for ``result`` (a :class:`TrialResult` or a trial store path) to
    ``path`` (``.md`` or ``.html``) and return it. Optional tables/figures: a sample-size search
    (:func:`sample_size`), escalation operating characteristics (:func:`escalate`) and a dose
    sweep (:func:`dose_pta`)."""
    if not isinstance(result, TrialResult):
        missing = groups.unfinished(result)
        if missing:  # a report without them would silently lose sections
            raise StoreError(groups.incomplete_message(result, missing))
        stored = load_tables(result)  # what `cohort trial` computed beside the trial
        sample_sizes = stored.get("sample_sizes") if sample_sizes is None else sample_sizes
        escalation = stored.get("escalation") if escalation is None else escalation
        dose_pta = stored.get("dose_pta") if dose_pta is None else dose_pta
        result = open_trial(result)
    path = check_replaceable(path, overwrite=overwrite, flag="report path")
    if path.suffix.lower() not in (".md", ".html"):
        raise OutputError(f"report path {str(path)!r}: use a .md or .html file name")
    analysis = analysis or analyze(result)  # in memory: the input store is never modified
    spec = result.spec
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".html":
        # Self-contained: the figures are embedded, drawn in a folder that is then removed.
        with tempfile.TemporaryDirectory() as tmp:
            figs = _all_figures(result, analysis, sample_sizes, dose_pta, lambda n: Path(tmp) / n)
            tables = _tables(result, analysis, sample_sizes, escalation, dose_pta)
            path.write_text(_html(spec.name, _intro(result), tables, figs), encoding="utf-8")
        return path
    folder = report_directory(
        path.parent / f"{path.stem}_figures", overwrite=overwrite, flag="report figures"
    )
    figs = _all_figures(
        result,
        analysis,
        sample_sizes,
        dose_pta,
        lambda name: claim_file(folder, name, overwrite=overwrite, flag="report figures"),
    )
    parts = [REPORT_HEADER, f"# Trial report: {spec.name}", "", _intro(result), ""]
    for title, df in _tables(result, analysis, sample_sizes, escalation, dose_pta):
        parts += [f"## {title}", "", _md_table(df), ""]
    for title, fig in figs:
        parts += [f"## {title}", "", f"![{title}]({fig.relative_to(path.parent).as_posix()})", ""]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _all_figures(result, analysis, sample_sizes, dose_pta, claim) -> list[tuple[str, Path]]:
    figs = _figures(result, analysis, claim, sample_sizes)
    if dose_pta is not None and len(dose_pta):
        from cohort.trial import figures

        path_fig = figures.pta_curve(dose_pta, claim("pta_sweep.png"), _dose_units(result.spec))
        figs.append(("Dose–PTA curve (dose sweep, same patients at every dose)", path_fig))
    return figs


def _intro(result: TrialResult) -> str:
    spec = result.spec
    pd_attrs = result.patients.attrs
    return (
        f"{spec.description}\n\nModel `{spec.model}` "
        f"({result.simulation.attrs.get('method', '')}), "
        f"{spec.replicates} replicate trials × {spec.n} patients, seed {spec.seed}, spec "
        f"`{spec.path}` (hash {spec.digest}). Eligible fraction of candidates: "
        f"{float(pd_attrs.get('eligible_fraction', 1.0)):.1%}. Dropout hazard "
        f"{spec.dropout_hazard:g} per {_time_unit(result)}, estimand {spec.estimand}."
    )


def _tables(result, analysis, sample_sizes, escalation, dose_pta) -> list:
    spec = result.spec
    tables: list[tuple[str, pd.DataFrame]] = [("Design", _design_table(result))]
    cols = [
        "comparison",
        "method",
        "estimate_mean",
        "estimate_q05",
        "estimate_q95",
        "n_mean",
        "expected_n",  # a group-sequential design's expected sample size
        "power",
        "power_mc_low",
        "power_mc_high",
        "harm_rate",
        "replicates",
        "not_analysable",
    ]
    if len(analysis.summary):
        sided = "two" if spec.sided == 2 else "one"
        tables.append((
            f"Power per comparison (95 % Monte Carlo CI): the fraction of all replicate trials "
            f"rejecting H0 in the direction of benefit ({sided}-sided, alpha {spec.alpha:g}); "
            "harm_rate: rejecting it the other way; not_analysable: trials with too few patients "
            "or events in an arm, counted as not rejecting",
            analysis.summary[[c for c in cols if c in analysis.summary]],
        ))  # fmt: skip
    if analysis.bounds is not None:
        looks = spec.sequential.looks
        futility = spec.sequential.futility
        bounds = {"information fraction": looks, "efficacy z boundary": analysis.bounds}
        if futility is not None:  # futility applies at the interim looks only
            bounds["futility z boundary"] = [futility] * (len(looks) - 1) + [float("nan")]
        tables.append(("Group-sequential boundaries (z)", pd.DataFrame(bounds)))
    if analysis.looks is not None and len(analysis.looks):
        tables.append(
            (
                "Stopping per look (efficacy, harm, futility) and patients (the expected "
                "sample size is the power table's expected_n); mean estimates of the trials "
                "stopping there, by reason (all: every "
                "trial stopping there, at the last look every trial still running). They are "
                "naive (not bias-adjusted): an efficacy stop happens when the estimate is large "
                "(biased away from zero), a futility stop when it is small (biased towards it)",
                analysis.looks,
            )
        )
    if len(analysis.pta):
        tables.append(
            (
                "Probability of target attainment",
                analysis.pta[["target", "arm", "dose", "pta", "n"]],
            )
        )
    if sample_sizes is not None:
        tables.append(
            (
                "Sample-size search",
                sample_sizes[
                    ["n", "comparison", "power", "power_mc_low", "power_mc_high", "meets_target"]
                ],
            )
        )
    if dose_pta is not None:
        tables.append(("Dose–PTA sweep", dose_pta))
    if escalation is not None:
        tables.append(
            (
                f"Dose escalation ({escalation.attrs.get('design', '')}); none selected: "
                f"{escalation.attrs.get('none_selected', 0):.1%}; true DLT rates (95 % Wilson "
                f"CI) from a pool of {escalation.attrs.get('pool', 0):,} virtual patients, "
                "P(select) with its Monte Carlo CI",
                escalation,
            )
        )
    return tables


def _html(name: str, intro: str, tables, figs) -> str:
    body = [f"<h1>Trial report: {html.escape(name)}</h1>", f"<p>{html.escape(intro)}</p>"]
    for title, df in tables:
        body += [
            f"<h2>{html.escape(title)}</h2>",
            df.to_html(index=False, float_format=lambda v: f"{v:.4g}"),
        ]
    for title, fig in figs:
        data = base64.b64encode(fig.read_bytes()).decode()
        body += [
            f"<h2>{html.escape(title)}</h2>",
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">',
        ]
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    )
    head = f"<meta charset='utf-8'><title>{html.escape(name)}</title><style>{style}</style>"
    page = f"<html><head>{head}</head><body>{''.join(body)}</body></html>"
    return f"<!doctype html>{REPORT_HEADER}{page}"
