"""``analyze``: per-replicate comparisons, power with Monte Carlo CIs, PTA by arm.

Each ``[[analysis.tests]]`` entry is run for every non-control arm against the control arm in
every replicate (no multiplicity adjustment: report power per comparison). With
``[analysis.sequential]`` the test is repeated at each interim look on the patients enrolled so
far; a replicate stops at the first look whose statistic crosses the Lan–DeMets boundary
(efficacy) or falls below the futility bound, and its estimate and p-value are those of that
look. Power is the fraction of replicates that reject, with a Wilson 95 % Monte Carlo CI.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats as sp_stats

from cohort.population.expr import evaluate
from cohort.trial import groups, sequential, stats
from cohort.trial.run import TrialResult


@dataclasses.dataclass
class Analysis:
    """Per-replicate results (``replicates``: dims ``comparison`` x ``replicate``), the power
    table (one row per comparison), PTA by arm and the group-sequential boundaries used."""

    replicates: xr.Dataset
    summary: pd.DataFrame
    pta: pd.DataFrame
    bounds: np.ndarray | None = None
    looks: pd.DataFrame | None = None  # group-sequential operating characteristics per look


def look_table(reps: xr.Dataset, looks, n_total: int) -> pd.DataFrame:
    """Per comparison and look: the probability of stopping there for efficacy, for harm
    (two-sided crossing the other way) or for futility, the cumulative probability of having
    stopped, patients analysed, and the mean naive estimate among the trials stopping there for
    efficacy, for futility, for harm, and all of them (at the last look: every trial still running).
    Naive estimates at an early efficacy stop are biased away from zero (a trial stops early
    when its estimate is large), at a futility stop towards it; the expected sample size is in
    ``attrs['expected_n']``."""
    rows, expected = [], {}
    for label in reps.comparison.values:
        r = reps.sel(comparison=label)
        look = r["look"].values
        ok = np.isfinite(r["p"].values)
        est = r["estimate"].values
        futile = r["futile"].values if "futile" in r else np.zeros(len(look))
        n_k = [round(f * n_total) for f in looks]
        cumulative = 0.0
        for k, frac in enumerate(looks):
            at = ok & (look == k)
            share = float(at.mean()) if ok.any() else float("nan")
            cumulative += share
            rows.append(
                {
                    "comparison": label,
                    "look": k + 1,
                    "information": frac,
                    "patients": n_k[k],
                    "p_stop_efficacy": float((at & (r["reject"].values > 0)).mean()),
                    "p_stop_harm": float((at & (r["harm"].values > 0)).mean()),
                    "p_stop_futility": float((at & (futile > 0)).mean()),
                    "p_stopped_by_now": cumulative,
                    # by the reason for stopping: an early efficacy stop overestimates, a
                    # futility stop underestimates, and their mean would hide both
                    "mean_estimate_efficacy": _mean(est, at & (r["reject"].values > 0)),
                    "mean_estimate_futility": _mean(est, at & (futile > 0)),
                    "mean_estimate_harm": _mean(est, at & (r["harm"].values > 0)),
                    "mean_estimate_all": _mean(est, at),
                }
            )
        expected[str(label)] = float(
            np.sum([n_k[k] * np.mean(ok & (look == k)) for k in range(len(looks))])
        )
    table = pd.DataFrame(rows)
    table.attrs["expected_n"] = expected
    return table


def _finite(stat, values, *args) -> float:
    """``stat`` (nanmean, nanquantile) of the finite values, NaN when there are none (numpy
    then printed "Mean of empty slice" at a user running `cohort trial`)."""
    values = np.asarray(values, float)
    return float(stat(values, *args)) if np.isfinite(values).any() else float("nan")


def _mean(values: np.ndarray, where: np.ndarray) -> float:
    return float(np.nanmean(values[where])) if where.any() else np.nan


def _covariate(result: TrialResult, name: str) -> np.ndarray:
    if name in result.patients:
        return result.grid(name)
    raise KeyError(f"analysis covariate {name!r} is neither an endpoint nor a covariate")


def _warn_not_positive(y, arm, test, names, arms) -> None:
    """A log-scale test cannot use values <= 0 (e.g. a placebo arm's AUC of 0): they are left
    out as missing, which was done without a word; a probe's placebo arm of 961 patients
    became the 2-6 whose AUC was above 0 by assay noise, and power read 0.95."""
    import warnings

    from cohort.errors import CohortWarning

    for k in arms:
        in_arm = (arm == k) & np.isfinite(y)
        dropped = int(np.sum(in_arm & (y <= 0)))
        if dropped:
            warnings.warn(
                f"analysis test {test.test} of {test.endpoint} on the log scale: {dropped:,} of "
                f"{int(in_arm.sum()):,} values in arm {names[k]!r} are <= 0 and are left out "
                "(no logarithm), which biases the comparison when they are not rare; use "
                "log = false, or an endpoint that is > 0",
                CohortWarning,
                stacklevel=3,
            )


def compare(result: TrialResult, test, treat: int, control: int) -> dict[str, np.ndarray]:
    """One test (``spec.tests`` entry) of arm ``treat`` vs ``control`` in every replicate."""
    spec = result.spec
    y = result.grid(test.endpoint)
    arm = result.grid("arm")
    if test.log:
        _warn_not_positive(y, arm, test, spec.arm_names, (treat, control))
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(y > 0, np.log(y), np.nan)
    kw = {"alpha": spec.alpha, "sided": spec.sided}
    if test.test == "ancova":
        kw["covariate"] = _covariate(result, test.covariate)
    if test.test == "logrank":
        kw["event"] = result.grid(f"{test.endpoint}_event")
    base = stats.TESTS[test.test]

    def fn(*args, **kwargs):
        # Orient z so that positive = benefit (``direction``), for one-sided p-values and the
        # group-sequential efficacy / futility boundaries.
        res = base(*args, **kwargs)
        if test.direction == "lower":
            res["z"] = -res["z"]
            if spec.sided == 1:
                res["p"] = sp_stats.norm.sf(res["z"])
        return res

    order = result.grid("enrol_index")
    if spec.sequential is None:
        res = fn(y, arm, treat, control, np.ones(y.shape, bool), **kw)
        significant = res["p"] < spec.alpha
        # power counts only rejections in the direction of benefit (z oriented by
        # ``direction``); two-sided rejections the other way are reported as harm
        res["reject"] = (significant & (res["z"] > 0)).astype(float)
        res["harm"] = (significant & (res["z"] < 0)).astype(float)
        res["look"] = np.zeros(len(y))
        return res
    seq = spec.sequential
    per_look = [fn(y, arm, treat, control, order < round(f * spec.n), **kw) for f in seq.looks]
    z = np.column_stack([r["z"] for r in per_look])
    bounds = sequential.boundaries(seq.looks, spec.alpha, spec.sided, seq.spending)
    dec = sequential.decide(np.nan_to_num(z), bounds, spec.sided, seq.futility)
    rows = np.arange(len(y))
    res = {k: np.stack([r[k] for r in per_look], axis=1)[rows, dec["look"]] for k in stats.FIELDS}
    res["reject"] = dec["reject"].astype(float)
    res["harm"] = dec["harm"].astype(float)
    res["look"] = dec["look"].astype(float)
    res["futile"] = dec["futile"].astype(float)
    return res


def analyze(result: TrialResult, out: str | Path | None = None) -> Analysis:
    """Statistics of every replicate, power per comparison and PTA per arm.

    With ``out`` (the trial's own store) the per-replicate dataset is also written to its
    ``analysis`` group; without it nothing is written (a report never modifies its input)."""
    spec = result.spec
    names = spec.arm_names
    control = names.index(spec.control)
    blocks, labels, rows = [], [], []
    for test in spec.tests:
        for treat, arm in enumerate(names):
            if treat == control:
                continue
            res = compare(result, test, treat, control)
            label = f"{test.endpoint}: {arm} vs {spec.control} ({test.describe()})"
            labels.append(label)
            blocks.append(res)
            pw = stats.power_summary(np.where(np.isfinite(res["p"]), res["reject"], np.nan))
            rows.append(
                {
                    "comparison": label,
                    "endpoint": test.endpoint,
                    "test": test.test,
                    "method": stats.METHODS.get(test.test, test.test),
                    "arm": arm,
                    "dose": spec.arms[treat].dose,
                    "primary": test.primary,
                    "estimate_mean": _finite(np.nanmean, res["estimate"]),
                    "estimate_q05": _finite(np.nanquantile, res["estimate"], 0.05),
                    "estimate_q95": _finite(np.nanquantile, res["estimate"], 0.95),
                    "ci_width_mean": _finite(np.nanmean, res["ci_high"] - res["ci_low"]),
                    "n_mean": _finite(np.nanmean, res["n_treat"] + res["n_control"]),
                    "power": pw["power"],
                    "harm_rate": float(np.mean(np.nan_to_num(res["harm"]))),
                    "power_mc_low": pw["mc_low"],
                    "power_mc_high": pw["mc_high"],
                    "replicates": pw["replicates"],
                    "not_analysable": pw["not_analysable"],
                }
            )
    reps = xr.Dataset(
        {k: (("comparison", "replicate"), np.stack([b[k] for b in blocks])) for k in blocks[0]}
        if blocks
        else {},
        coords={"comparison": labels, "replicate": np.arange(spec.replicates)},
        attrs={"alpha": spec.alpha, "sided": spec.sided, "control": spec.control},
    )
    bounds = None
    if spec.sequential is not None:
        s = spec.sequential
        bounds = sequential.boundaries(s.looks, spec.alpha, spec.sided, s.spending)
        reps.attrs["looks"] = list(s.looks)
        reps.attrs["boundaries"] = bounds.tolist()
        if s.futility is not None:
            reps.attrs["futility_bound"] = float(s.futility)
    table = None
    if spec.sequential is not None:
        table = look_table(reps, spec.sequential.looks, spec.n)
        expected = table.attrs["expected_n"]
        for row in rows:
            row["expected_n"] = expected.get(row["comparison"], np.nan)
    analysis = Analysis(reps, pd.DataFrame(rows), pta(result), bounds, table)
    target = out
    if target is not None:
        # Integer comparison index on disk: zarr v3 has no stable fixed-width string dtype.
        stored = reps.assign_coords(comparison=np.arange(len(labels)))
        stored.attrs["comparison_labels"] = json.dumps(labels)
        stored.attrs.pop("boundaries", None)
        stored.attrs.pop("looks", None)
        stored.to_zarr(str(target), group="analysis", mode="w", consolidated=False)
        groups.mark_done(target, "analysis")
    return analysis


def pta(result: TrialResult) -> pd.DataFrame:
    """Probability of target attainment per arm for each ``[[pta]]`` target (pooled over
    replicates; patients with a missing endpoint are left out). Arms ordered by dose give the
    dose–PTA curve."""
    spec = result.spec
    env = {k: np.asarray(result.patients[k].values) for k in result.patients.data_vars}
    arm = env["arm"]
    rows = []
    for name, target in spec.pta:
        hit = evaluate(target, env)
        known = np.ones(len(arm), bool)
        for k in _names(target):
            known &= np.isfinite(env[k])
        for i, a in enumerate(spec.arms):
            sel = known & (arm == i)
            p = float(np.mean(hit[sel] > 0)) if sel.any() else np.nan
            rows.append(
                {
                    "target": name,
                    "expression": target,
                    "arm": a.name,
                    "dose": a.dose,
                    "pta": p,
                    "n": int(sel.sum()),
                }
            )
    return pd.DataFrame(rows)


def _names(expr: str) -> set[str]:
    from cohort.population.expr import names_in

    return names_in(expr)


def check_sample_sizes(spec, sizes=None) -> list[int]:
    """The total sample sizes a search runs: ``sizes``, else the spec's ``[analysis]
    sample_sizes`` (refused when neither gives any, or one is not a whole number >= 2)."""
    from cohort.trial.schema import TrialSpecError

    sizes = list(sizes or spec.sample_sizes)
    if not sizes:
        raise TrialSpecError(
            f"{spec.path}: a sample-size search (--sample-size) needs the total sizes to try: "
            "add [analysis] sample_sizes = [40, 80, 120] to the spec"
        )
    bad = [n for n in sizes if not (float(n) == int(n) and int(n) >= 2)]
    if bad:
        raise TrialSpecError(f"{spec.path}: sample sizes must be whole numbers >= 2, got {bad}")
    return [int(n) for n in sizes]


def sample_size(
    spec,
    sizes: list[int] | None = None,
    replicates: int | None = None,
    seed: int | None = None,
) -> pd.DataFrame:
    """Power of the primary comparison(s) for each total sample size in ``sizes`` (default:
    ``[analysis] sample_sizes``); the column ``meets_target`` marks where power >= target.
    Each size is a full vectorized trial simulation with the same seed."""
    from cohort.trial.run import run
    from cohort.trial.spec import TrialSpec, load

    if not isinstance(spec, TrialSpec):
        spec = load(spec)
    sizes = check_sample_sizes(spec, sizes)
    frames = []
    for n in sizes:
        res = analyze(run(spec, seed=seed, replicates=replicates, n=n))
        tab = res.summary[res.summary["primary"]].copy()
        tab.insert(0, "n", n)
        frames.append(tab)
    table = pd.concat(frames, ignore_index=True)
    table["meets_target"] = table["power"] >= spec.power_target
    return table
