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

import numpy as np

from cohort.errors import CohortError
from cohort.trial.spec import Assay, Endpoint


class EndpointError(CohortError, ValueError):
    """An endpoint refers to a time or output the trial does not observe."""


def observe(
    true: np.ndarray, assay: Assay | None, gen: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy observations ``[P, T]`` and the below-LLOQ mask for one output."""
    if assay is None:
        return true.copy(), np.zeros(true.shape, bool)
    e = gen.standard_normal((2, *true.shape))
    obs = true * (1.0 + assay.proportional * e[0]) + assay.additive * e[1]
    return obs, obs < assay.lloq if assay.lloq > 0 else np.zeros(true.shape, bool)


def _col(times: np.ndarray, t: float, what: str) -> int:
    hit = np.flatnonzero(np.isclose(times, t))
    if not hit.size:
        raise EndpointError(f"{what}: time {t:g} is not an observation time {times.tolist()}")
    return int(hit[0])


def compute(
    endpoints: tuple[Endpoint, ...],
    obs: dict[str, np.ndarray],
    blq: dict[str, np.ndarray],
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
        if ep.observed:
            y, times = obs[ep.output].copy(), sample_times
            low = blq.get(ep.output, np.zeros(y.shape, bool))
            floor = 0.0 if ep.type in ("auc", "cmax") else lloq.get(ep.output, 0.0) / 2
            y[low] = floor
        else:
            y, times = true[ep.output], grid
        if ep.type in ("auc", "cmax"):
            sel = (times >= ep.start) & (times <= ep.end)
            if sel.sum() < (2 if ep.type == "auc" else 1):
                raise EndpointError(f"endpoint {ep.name!r}: too few observation times in window")
            ys, ts = y[:, sel], times[sel]
            v = np.trapezoid(ys, ts, axis=1) if ep.type == "auc" else ys.max(axis=1)
            needed = ts[-1]
        else:
            v = y[:, _col(times, ep.time, f"endpoint {ep.name!r}")]
            if ep.type == "change":
                v = v - y[:, _col(times, ep.baseline, f"endpoint {ep.name!r} baseline")]
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
