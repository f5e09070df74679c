"""From simulated time courses to what a trial measures: assay error, LLOQ, dropout, endpoints.

Observations: ``y_obs = y (1 + prop e1) + add e2`` with standard normal ``e1, e2`` (the usual
combined residual error model); values below the LLOQ are flagged. Samples after a patient's
dropout are missing. Endpoint rules (documented choices, as in NCA practice):

* ``auc`` (linear trapezoid) and ``cmax`` over ``[start, end]``, BLQ samples count as 0;
* ``ctrough`` / ``value`` at ``time``, ``change`` = value at ``time`` minus value at ``baseline``,
  BLQ samples count as LLOQ/2;
* ``responder``: 1 when another endpoint is above/below a threshold, else 0;
* ``tte``: event time from the hazard ``h(t) = baseline_hazard * exp(coefficient * y(t))``
  on the true simulated time course (inverse cumulative hazard of an Exp(1) draw), censored at
  dropout or the end of follow-up; ``<name>_event`` holds 1 for events, 0 for censored.

With ``estimand = "complete_case"`` a patient who dropped out before the end of an endpoint's
window has a missing value; ``"hypothetical"`` uses the value the patient would have had
without dropout (known in simulation: the estimand "had they not discontinued").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cohort.errors import CohortError
from cohort.trial.spec import Assay, Endpoint


class EndpointError(CohortError, ValueError):
    """An endpoint refers to a time or output the trial does not observe."""


PRE_DOSE = 1e-6
"""Relative offset of the pre-dose copy of a simulation time at which some arm doses: the
value there is the left limit (a sample drawn just before the dose) to ~1e-6 of the time."""


def pre_dose_time(t: float) -> float:
    return float(t) - PRE_DOSE * max(1.0, abs(float(t)))


def pre_dose_columns(times: np.ndarray, after: np.ndarray) -> np.ndarray:
    """For the columns ``after`` of ``times``, the column of their pre-dose copy where the
    simulation has one, else the same column."""
    prev = np.maximum(after - 1, 0)
    target = np.array([pre_dose_time(t) for t in times[after]])
    has = (after > 0) & np.isclose(times[prev], target, rtol=0, atol=1e-12 + 1e-3 * PRE_DOSE)
    return np.where(has, prev, after)


class Samples(NamedTuple):
    """Observed samples per output ``[P, T]``: ``before`` any dose at the sample's time (what
    a sample drawn at a dose time measures), ``after`` it (the same draw of assay error; an
    AUC window starting at a dose time starts there), and their below-LLOQ masks."""

    before: dict[str, np.ndarray]
    after: dict[str, np.ndarray]
    blq_before: dict[str, np.ndarray]
    blq_after: dict[str, np.ndarray]


def observe(
    true: np.ndarray, assay: Assay | None, gen: np.random.Generator, also: np.ndarray | None = None
):
    """Noisy observations ``[P, T]`` and the below-LLOQ mask for one output; with ``also``
    (the same samples' values after a dose at their time), the same for it with the same
    draws of assay error, as a second pair."""
    pairs = []
    # drawn patient by patient ([P, 2, T]): the first patients' errors are the same
    # whatever the number of patients
    e = None if assay is None else gen.standard_normal((true.shape[0], 2, *true.shape[1:]))
    for y in (true,) if also is None else (true, also):
        if assay is None:
            pairs.append((y.copy(), np.zeros(y.shape, bool)))
            continue
        obs = y * (1.0 + assay.proportional * e[:, 0]) + assay.additive * e[:, 1]
        pairs.append((obs, obs < assay.lloq if assay.lloq > 0 else np.zeros(y.shape, bool)))
    return pairs[0] if also is None else tuple(pairs)


def _col(times: np.ndarray, t: float, what: str, observed: bool = True) -> int:
    """The column of time ``t``: on the simulation grid (``observed=False``) its pre-dose copy
    where it has one (a value at a dose time is the one before the dose, as a sample drawn
    then measures; observed samples are already taken so)."""
    hit = np.flatnonzero(np.isclose(times, t, rtol=0, atol=1e-9 * max(1.0, abs(t))))
    if not hit.size:
        shown = [float(x) for x in times if np.isclose(x, np.round(x, 6), rtol=0, atol=1e-9)]
        raise EndpointError(f"{what}: time {t:g} is not an observation time {shown}")
    k = int(hit[0])
    if not observed:
        k = int(pre_dose_columns(times, np.array([k]))[0])
    return k


def _floored(values: dict, blq: dict, output: str, floor: float) -> np.ndarray:
    y = values[output].copy()
    y[blq.get(output, np.zeros(y.shape, bool))] = floor
    return y


def compute(
    endpoints: tuple[Endpoint, ...],
    samples: Samples,
    lloq: dict[str, float],
    sample_times: np.ndarray,
    true: dict[str, np.ndarray],
    grid: np.ndarray,
    dropout: np.ndarray,
    estimand: str,
    gen: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Every endpoint per patient (``[P]`` float arrays; NaN where missing)."""
    out: dict[str, np.ndarray] = {}
    hypothetical = estimand == "hypothetical"
    for ep in endpoints:
        if ep.type == "responder":
            v = out[ep.of]
            hit = v > ep.above if ep.above is not None else v < ep.below
            out[ep.name] = np.where(np.isnan(v), np.nan, hit.astype(float))
            continue
        if ep.type == "tte":
            t_ev, event = _event_times(ep, true[ep.output], grid, dropout, gen)
            out[ep.name], out[f"{ep.name}_event"] = t_ev, event
            continue
        floor = 0.0 if ep.type in ("auc", "cmax") else lloq.get(ep.output, 0.0) / 2
        if ep.observed:
            y, times = _floored(samples.before, samples.blq_before, ep.output, floor), sample_times
        else:
            y, times = true[ep.output], grid
        if ep.type in ("auc", "cmax"):
            # a window ending at a dose time stops before the dose (its pre-dose copy on the
            # simulation grid); one starting at a dose time starts after it
            end = (
                ep.end
                if ep.observed
                else times[_col(times, ep.end, f"endpoint {ep.name!r} end", observed=False)]
            )
            sel = (times >= ep.start) & (times <= end)
            if sel.sum() < (2 if ep.type == "auc" else 1):
                raise EndpointError(f"endpoint {ep.name!r}: too few observation times in window")
            ys, ts = y[:, sel], times[sel]
            if ep.observed:  # the window's first sample: after a dose at its time
                after = _floored(samples.after, samples.blq_after, ep.output, floor)
                ys = ys.copy()
                ys[:, 0] = after[:, np.flatnonzero(sel)[0]]
            v = np.trapezoid(ys, ts, axis=1) if ep.type == "auc" else ys.max(axis=1)
            needed = ep.end
        else:
            v = y[:, _col(times, ep.time, f"endpoint {ep.name!r}", ep.observed)]
            if ep.type == "change":
                v = v - y[:, _col(times, ep.baseline, f"endpoint {ep.name!r} baseline",
                                  ep.observed)]  # fmt: skip
            needed = ep.time
        out[ep.name] = v if hypothetical else np.where(dropout < needed, np.nan, v)
    return out


def _event_times(
    ep: Endpoint, y: np.ndarray, grid: np.ndarray, dropout: np.ndarray, gen: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-cumulative-hazard event times on the simulation grid, with censoring."""
    hazard = ep.baseline_hazard * np.exp(ep.coefficient * np.nan_to_num(y))
    steps = 0.5 * (hazard[:, 1:] + hazard[:, :-1]) * np.diff(grid)
    cum = np.concatenate([np.zeros((len(y), 1)), np.cumsum(steps, axis=1)], axis=1)
    target = gen.exponential(1.0, size=len(y))
    k = np.sum(cum < target[:, None], axis=1)  # first grid index with cum >= target
    inside = k < len(grid)
    kk = np.clip(k, 1, len(grid) - 1)
    rows = np.arange(len(y))
    c0, c1 = cum[rows, kk - 1], cum[rows, kk]
    frac = np.where(c1 > c0, (target - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0)
    t_event = np.where(inside, grid[kk - 1] + frac * (grid[kk] - grid[kk - 1]), np.inf)
    stop = np.minimum(dropout, grid[-1])
    event = t_event <= stop
    return np.where(event, t_event, stop), event.astype(float)
