"""Dose escalation (3+3, BOIN, CRM) where toxicity comes from simulated time courses.

A pool of virtual patients is simulated at every dose level (the spec's arms, in order) in one
vectorized call; a patient's dose-limiting toxicity (DLT) at a level is the spec's
``[escalation] toxicity`` expression evaluated on that patient's endpoints (e.g. ``cmax > 20``)
on its measured values: the true exposure rises with dose, but the assay error is drawn anew at
each level, as each measurement's would be, so a patient near the threshold can have a DLT at
one level and none at the next (7 of 500 pool patients of
``experiments/theophylline_escalation.toml``). Each replicate escalation draws its patients
from the pool at random with replacement, as draws from the population the pool samples (a
virtual patient may then be enrolled twice in one trial: 59 % of 30-patient trials from a pool
of 500; a larger ``pool`` makes it rarer) and applies the design's rules:

* **3+3** (Storer 1989, design "A"): 0/3 DLT escalate; 1/3 expand to 6, escalate if <= 1/6;
  >= 2 DLTs stop and de-escalate, expanding the lower dose to 6 if it has 3. MTD = highest dose
  with <= 1/6 DLTs among 6.
* **BOIN** (Liu & Yuan 2015, JRSS-C 64:507): escalate if the observed DLT rate <= lambda_e,
  de-escalate if >= lambda_d (phi1 = 0.6 phi, phi2 = 1.4 phi); eliminate a dose and those above
  if P(p > phi | data) > 0.95 under Beta(1, 1); MTD by isotonic regression of the rates
  (``scipy.optimize.isotonic_regression``), closest to phi.
* **CRM** (O'Quigley, Pepe & Fisher 1990): one-parameter power model, see :func:`_crm`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize, stats

from cohort.population.expr import evaluate
from cohort.trial import design
from cohort.trial.schema import TrialSpecError
from cohort.trial.spec import TrialSpec, load
from cohort.trial.stats import wilson


def toxicity_matrix(spec: TrialSpec, seed: int) -> np.ndarray:
    """DLT indicator ``[dose_levels, pool]``: every pool patient simulated at every level,
    judged on measured values (assay error as in the trial itself)."""
    from cohort.trial.run import potential_outcomes

    values = potential_outcomes(spec, spec.escalation.pool, seed)
    return evaluate(spec.escalation.toxicity, values) > 0


def _three_plus_three(tox: np.ndarray, draws: np.ndarray, cohort_size: int, cap: int):
    levels = tox.shape[0]
    n, dlt = np.zeros(levels, int), np.zeros(levels, int)
    used, d = 0, 0

    def treat(level: int) -> None:
        nonlocal used
        pts = draws[used : used + cohort_size]
        used += len(pts)
        n[level] += len(pts)
        dlt[level] += int(tox[level, pts].sum())

    while used + cohort_size <= cap:
        treat(d)
        if n[d] == cohort_size and dlt[d] == 1:
            continue  # expand to 6 at the same dose
        if dlt[d] <= (0 if n[d] == cohort_size else 1):
            if d + 1 < levels:
                d += 1
                continue
            if n[d] == cohort_size:
                continue  # top dose: confirm with 6
            return d, n, dlt
        # too toxic: de-escalate, expanding the lower dose to 6 if needed
        while d > 0:
            d -= 1
            if n[d] < 2 * cohort_size and used + cohort_size <= cap:
                treat(d)
            if dlt[d] <= 1:
                return d, n, dlt
        return -1, n, dlt
    tried = np.flatnonzero((n >= 2 * cohort_size) & (dlt <= 1))
    return (int(tried.max()) if tried.size else -1), n, dlt


def boin_bounds(target: float) -> tuple[float, float]:
    """BOIN escalation / de-escalation boundaries (lambda_e, lambda_d) for ``target``."""
    p1, p2 = 0.6 * target, 1.4 * target
    le = math.log((1 - p1) / (1 - target)) / math.log(target * (1 - p1) / (p1 * (1 - target)))
    ld = math.log((1 - target) / (1 - p2)) / math.log(p2 * (1 - target) / (target * (1 - p2)))
    return le, ld


def _boin(tox: np.ndarray, draws: np.ndarray, cohort_size: int, cap: int, target: float):
    levels = tox.shape[0]
    le, ld = boin_bounds(target)
    n, dlt = np.zeros(levels, int), np.zeros(levels, int)
    top, used, d = levels - 1, 0, 0
    while used + cohort_size <= cap:
        pts = draws[used : used + cohort_size]
        used += len(pts)
        n[d] += len(pts)
        dlt[d] += int(tox[d, pts].sum())
        if n[d] >= 3 and stats.beta.sf(target, 1 + dlt[d], 1 + n[d] - dlt[d]) > 0.95:
            top = d - 1  # eliminate this dose and all above
            if top < 0:
                return -1, n, dlt
        rate = dlt[d] / n[d]
        if rate <= le and d < top:
            d += 1
        elif rate >= ld and d > 0:
            d -= 1
        d = min(d, top)
    tried = np.flatnonzero(n[: top + 1] > 0)
    if not tried.size:
        return -1, n, dlt
    iso = optimize.isotonic_regression(dlt[tried] / n[tried], weights=n[tried]).x
    best = tried[int(np.argmin(np.abs(iso - target + 1e-9 * tried)))]
    return int(best), n, dlt


def crm_skeleton(levels: int, target: float) -> np.ndarray:
    """Default CRM skeleton: prior DLT probabilities spaced by 0.1 around ``target`` at the
    middle level (a simple design choice; give ``skeleton`` in the spec to calibrate)."""
    return np.clip(target + 0.1 * (np.arange(levels) - (levels - 1) / 2), 0.01, 0.95)


def _crm(
    tox,
    draws,
    cohort_size: int,
    cap: int,
    target: float,
    skeleton: np.ndarray,
    estimate: str = "plugin",
):
    """One-parameter power-model CRM: p_d = skeleton_d ** exp(a), a ~ N(0, 1.34) (O'Quigley
    et al. 1990; prior variance as in dfcrm). Posterior on a grid of ``a``. DLT probabilities
    are estimated as in dfcrm (``estimate="plugin"``: ``skeleton_d ** exp(E[a | data])``) or
    as posterior means (``"posterior_mean"``). The next dose is the one estimated closest to
    ``target``, escalating at most one level at a time; stop for safety when
    P(p_1 > target) > 0.9. The recommended MTD is the dose closest to ``target`` among the
    doses patients actually received (never an untried dose)."""
    levels = tox.shape[0]
    grid = np.linspace(-6.0, 6.0, 801)
    log_prior = -0.5 * grid**2 / 1.34
    p_grid = np.clip(skeleton[:, None] ** np.exp(grid)[None, :], 1e-12, 1 - 1e-12)
    n, dlt = np.zeros(levels, int), np.zeros(levels, int)
    used, d = 0, 0
    p_est = skeleton.copy()
    while used + cohort_size <= cap:
        pts = draws[used : used + cohort_size]
        used += len(pts)
        n[d] += len(pts)
        dlt[d] += int(tox[d, pts].sum())
        loglik = (dlt[:, None] * np.log(p_grid) + (n - dlt)[:, None] * np.log1p(-p_grid)).sum(0)
        w = np.exp(log_prior + loglik - np.max(log_prior + loglik))
        w /= w.sum()
        if n[0] >= 3 and float(np.sum(w * (p_grid[0] > target))) > 0.9:
            return -1, n, dlt
        if estimate == "plugin":
            p_est = skeleton ** np.exp(float(np.sum(w * grid)))
        else:
            p_est = p_grid @ w
        best = int(np.argmin(np.abs(p_est - target)))
        d = min(best, d + 1)
    tried = np.flatnonzero(n > 0)
    return int(tried[np.argmin(np.abs(p_est[tried] - target))]), n, dlt


def check_escalation(spec: TrialSpec) -> None:
    """Refuse a spec without an ``[escalation]`` table before anything is run."""
    if spec.escalation is None:
        raise TrialSpecError(
            f"{spec.path}: no [escalation] table: --escalation runs the spec's dose-escalation "
            "design (as in experiments/theophylline_escalation.toml); add one, or drop "
            "--escalation"
        )


def escalate(
    spec: TrialSpec | str, replicates: int | None = None, seed: int | None = None
) -> pd.DataFrame:
    """Operating characteristics of the spec's escalation design, one row per dose level:
    true DLT probability in the pool with its 95 % interval (the pool is a sample:
    ``[escalation] pool`` patients), P(selected as MTD) with its Monte Carlo interval, mean
    patients and DLTs per level. ``attrs['none_selected']`` is the fraction of replicates with
    no dose selected, ``attrs['pool']`` the pool size."""
    if not isinstance(spec, TrialSpec):
        spec = load(spec)
    check_escalation(spec)
    esc = spec.escalation
    seed = spec.seed if seed is None else seed
    reps = spec.replicates if replicates is None else int(replicates)
    tox = toxicity_matrix(spec, seed)
    gen = design.rng(seed, "escalation")
    levels = tox.shape[0]
    chosen = np.zeros(levels + 1)
    skel = np.asarray(esc.skeleton) if esc.skeleton else crm_skeleton(levels, esc.target)
    n_tot, dlt_tot = np.zeros(levels), np.zeros(levels)
    for _ in range(reps):
        draws = gen.integers(0, tox.shape[1], esc.max_patients)
        if esc.design == "3+3":
            mtd, n, dlt = _three_plus_three(tox, draws, esc.cohort_size, esc.max_patients)
        elif esc.design == "boin":
            mtd, n, dlt = _boin(tox, draws, esc.cohort_size, esc.max_patients, esc.target)
        else:
            mtd, n, dlt = _crm(
                tox, draws, esc.cohort_size, esc.max_patients, esc.target, skel, esc.crm_estimate
            )
        chosen[mtd] += 1  # index -1 = none selected
        n_tot += n
        dlt_tot += dlt
    # The true DLT probabilities are estimated from the pool (a finite sample of virtual
    # patients): their 95 % Wilson interval says how far the operating characteristics can be
    # trusted, like power's Monte Carlo interval.
    p_dlt, dlt_low, dlt_high = wilson(tox.sum(axis=1), tox.shape[1])
    p_select, sel_low, sel_high = wilson(chosen[:levels], reps)
    table = pd.DataFrame(
        {
            "arm": list(spec.arm_names),
            "dose": [a.dose for a in spec.arms],
            "p_dlt": p_dlt,
            "p_dlt_low": dlt_low,
            "p_dlt_high": dlt_high,
            "p_select": p_select,
            "p_select_low": sel_low,
            "p_select_high": sel_high,
            "mean_patients": n_tot / reps,
            "mean_dlts": dlt_tot / reps,
        }
    )
    table.attrs["none_selected"] = float(chosen[-1] / reps)
    table.attrs["pool"] = int(tox.shape[1])
    table.attrs["design"] = esc.design
    if esc.design == "crm":
        table.attrs["crm_estimate"] = esc.crm_estimate
    return table
