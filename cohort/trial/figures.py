"""Trial figures as PNG files (matplotlib ``Figure`` objects with the Agg canvas; no pyplot
global state, nothing shown): bands per arm, forest plot, power curve, dose–PTA, Kaplan–Meier.

Each function writes one PNG and returns its path; the report module assembles them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cohort.store.figures import save_figure


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    return save_figure(fig, path, dpi=110)


def bands(
    times: np.ndarray,
    values: np.ndarray,
    arm: np.ndarray,
    arm_names: list[str],
    label: str,
    path: Path,
    time_units: str = "",
) -> Path:
    """Median and 5–95 % band of ``values [P, T]`` over patients, one colour per arm."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for i, name in enumerate(arm_names):
        v = values[arm == i]
        if not len(v):
            continue
        lo, mid, hi = np.nanquantile(v, [0.05, 0.5, 0.95], axis=0)
        ax.fill_between(times, lo, hi, alpha=0.2, color=f"C{i}")
        ax.plot(times, mid, color=f"C{i}", lw=2, label=name)
    ax.set_xlabel(f"time [{time_units}]" if time_units else "time")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(title="median, 5–95 %")
    return _save(fig, path)


def forest(summary: pd.DataFrame, reps, path: Path, units: dict | None = None) -> Path:
    """Per comparison: mean estimate, mean 95 % CI (thin) and 5–95 % of replicate estimates;
    one panel per endpoint/test, since effects of different endpoints have different scales.
    ``units`` maps an endpoint to its units (shown on its axis)."""
    labels = np.asarray(reps["comparison"].values).astype(str)
    groups = list(dict.fromkeys(zip(summary["endpoint"], summary["test"])))
    fig = Figure(figsize=(8, 0.55 * len(labels) + 1.0 * len(groups) + 0.5))
    heights = [
        max(1, int(((summary["endpoint"] == e) & (summary["test"] == t)).sum())) for e, t in groups
    ]
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (endpoint, test) in zip(axes, groups):
        rows = np.flatnonzero((summary["endpoint"] == endpoint) & (summary["test"] == test))
        est = reps["estimate"].values[rows]
        lo = np.nanmean(reps["ci_low"].values[rows], 1)
        hi = np.nanmean(reps["ci_high"].values[rows], 1)
        q05, q95 = np.nanquantile(est, [0.05, 0.95], axis=1)
        y = np.arange(len(rows))[::-1]
        ax.hlines(y, lo, hi, color="0.4", lw=1, label="mean 95 % CI")
        ax.hlines(y, q05, q95, color="C0", lw=5, alpha=0.5, label="5–95 % of replicates")
        ax.plot(np.nanmean(est, 1), y, "ko", label="mean estimate")
        ax.axvline(0, color="C3", lw=1)
        ax.set_yticks(y, labels[rows], fontsize=8)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        unit = (units or {}).get(endpoint, "")
        if test == "logrank":
            scale = "log hazard ratio"
        elif test == "responder":
            scale = "difference in responder proportion"
        else:
            scale = "treatment − control" + (f" [{unit}]" if unit else "")
        ax.set_xlabel(f"{endpoint} ({test}): {scale}", fontsize=9)
    axes[0].legend(fontsize=7, loc="best")
    return _save(fig, path)


def power_curve(
    x: np.ndarray,
    power: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    xlabel: str,
    target: float,
    path: Path,
    connect: bool = True,
) -> Path:
    """Power against ``x`` (sample size or dose) with Monte Carlo CI error bars; with
    ``connect=False`` (doses: nothing was simulated between them) points only, no lines."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    ax.errorbar(
        x,
        power,
        yerr=[np.clip(power - low, 0, None), np.clip(high - power, 0, None)],
        fmt="o-" if connect else "o",
        capsize=3,
    )
    ax.axhline(target, color="C3", ls="--", lw=1, label=f"target {target:.0%}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("power (95 % MC CI)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def pta_curve(pta: pd.DataFrame, path: Path, dose_units: str = "") -> Path:
    """Probability of target attainment against dose, one line per target."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for name, g in pta.groupby("target", sort=False):
        g = g.sort_values("dose")
        ax.plot(g["dose"], g["pta"], "o-", label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"dose [{dose_units}]" if dose_units else "dose")
    ax.set_ylabel("probability of target attainment")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def kaplan_meier(
    durations: np.ndarray,
    events: np.ndarray,
    arm: np.ndarray,
    arm_names: list[str],
    title: str,
    path: Path,
    time_units: str = "",
    replicates: int = 1,
) -> Path:
    """Kaplan–Meier curves per arm (statsmodels ``SurvfuncRight``) pooled over replicates
    (the legend's n counts patients over all ``replicates``, and says so)."""
    from statsmodels.duration.survfunc import SurvfuncRight

    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for i, name in enumerate(arm_names):
        sel = (arm == i) & np.isfinite(durations)
        if sel.sum() < 2:
            continue
        km = SurvfuncRight(durations[sel], events[sel])
        t = np.concatenate([[0.0], km.surv_times])
        s = np.concatenate([[1.0], km.surv_prob])
        pooled = f" pooled over {replicates} replicates" if replicates > 1 else ""
        label = f"{name} (n={int(sel.sum()):,}{pooled})"
        ax.step(t, s, where="post", color=f"C{i}", label=label)
    ax.set_title(title)
    ax.set_xlabel(f"time [{time_units}]" if time_units else "time")
    ax.set_ylabel("event-free probability")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
