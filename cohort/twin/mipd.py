"""Closed-loop model-informed precision dosing (MIPD), simulated: vancomycin AUC24 400–600.

True patients (covariates and individual parameters) are drawn from the Goti et al. (2018)
population model (``priors/vancomycin_goti2018.toml``). Both arms start on label dosing
(15 mg/kg every 12 h, rounded to 250 mg, at most 2,000 mg per dose; infusions of
``duration`` h). Each day two TDM samples are drawn (a peak one hour after the first
infusion ends and a trough just before the second dose) with the model's residual error as
assay error; a sample below the assay's limit (0.5 mg/L) is reported as such (M3). In the
twin arm the twins are identified from day 0's samples and updated with each later day's,
and each next day's dose is the one with the highest probability that the next day's AUC
(0–24 h of that day) lies in 400–600 mg·h/L (:func:`cohort.twin.decide.recommend`,
strengths of 250 mg up to 3,000 mg). The label arm keeps its dose. Reported per day: the
fraction of patients whose *true* AUC is in the window (and below/above it).

The label rule ignores renal function and dialysis on purpose: it is the weight-only rule
the twin arm is compared with, not a recommendation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.dosing import Regimen
from cohort.twin.prior import TwinPrior
from cohort.twin.targets import AUC

PRIOR = Path(__file__).resolve().parent / "data" / "vancomycin_goti2018.toml"
"""The packaged copy of ``priors/vancomycin_goti2018.toml`` (identical; checked by a test)."""
LOW, HIGH = 400.0, 600.0
ASSAY_LLOQ = 0.5  # mg/L: a TDM sample below it is reported as below the limit (fitted by M3)


@dataclasses.dataclass
class MIPDResult:
    """``table``: one row per day and arm (fraction in/below/above target, median true AUC);
    ``auc``: true AUC per patient, day and arm; ``doses``: dose per patient, day and arm."""

    table: pd.DataFrame
    auc: pd.DataFrame
    doses: pd.DataFrame
    seconds: float


def label_dose(weight: np.ndarray) -> np.ndarray:
    """15 mg/kg rounded to 250 mg, between 500 and 2,000 mg."""
    return np.clip(np.round(15.0 * weight / 250.0) * 250.0, 500.0, 2000.0)


def run(
    n: int = 200,
    days: int = 3,
    seed: int = 1,
    duration: float = 1.5,
    n_draws: int = 300,
    progress=None,
) -> MIPDResult:
    """Simulate both arms for ``days`` days (day 0 on label dosing in both)."""
    import time

    from cohort.engine.simulate import simulate
    from cohort.population import generate

    t0 = time.perf_counter()
    prior = TwinPrior.from_spec(PRIOR)
    pop = generate(prior.spec.path, n=n, seed=seed)
    truth = {k: pop[k].to_numpy() for k in prior.model.parameter_names}
    cov = {c: pop[c].to_numpy() for c in prior.covariates}
    ids = np.arange(1, n + 1)
    rng = np.random.default_rng(seed + 7)
    _, add, prop = prior.error
    label = label_dose(cov["WT"])
    dose = {"label": label.copy(), "twin": label.copy()}
    history = {arm: [] for arm in dose}  # dose rows so far
    auc_rows, dose_rows = [], []
    twins = None
    target_of = {}
    for day in range(days):
        start = 24.0 * day
        for arm in dose:
            for t in (start, start + 12.0):
                history[arm].append(
                    pd.DataFrame(
                        {
                            "ID": ids,
                            "TIME": t,
                            "AMT": dose[arm],
                            "RATE": dose[arm] / duration,
                            "EVID": 1,
                            "DV": np.nan,
                        }
                    )
                )
            dose_rows.append(pd.DataFrame({"ID": ids, "day": day, "arm": arm, "dose": dose[arm]}))
        # the truth: each arm's concentrations on this day (AUC) and at the TDM times
        target = AUC("conc", LOW, HIGH, start=start, end=start + 24.0)
        target_of[day] = target
        peak, trough = start + duration + 1.0, start + 11.75
        grid = np.unique(np.concatenate([target.times(), [peak, trough]]))
        conc = {}
        for arm in dose:
            doses = pd.concat(history[arm], ignore_index=True)
            doses = doses.sort_values(["ID", "TIME"], kind="stable")
            sim = simulate(prior.model, truth, doses, grid)
            conc[arm] = sim["conc"].to_numpy()
            auc = target.value(np, conc[arm][:, np.searchsorted(grid, target.times())])
            auc_rows.append(pd.DataFrame({"ID": ids, "day": day, "arm": arm, "auc": auc}))
        if day == days - 1:
            break
        # TDM in the twin arm, then identify/update and choose tomorrow's dose
        c = conc["twin"][:, np.searchsorted(grid, [peak, trough])]
        y = c + np.sqrt(add**2 + (prop * c) ** 2) * rng.standard_normal(c.shape)
        below = y < ASSAY_LLOQ  # reported as below the limit (M3), not as a number
        obs = pd.DataFrame(
            {
                "ID": np.repeat(ids, 2),
                "TIME": np.tile([peak, trough], n),
                "AMT": 0.0,
                "RATE": 0.0,
                "EVID": 0,
                "DV": np.where(below, ASSAY_LLOQ, y).ravel(),
                "CENS": below.ravel().astype(int),
                "LLOQ": ASSAY_LLOQ,
            }
        )
        new = pd.concat([*history["twin"][-2:], obs], ignore_index=True)
        new = new.sort_values(["ID", "TIME"], kind="stable")
        for k, v in cov.items():
            new[k] = v[new["ID"].to_numpy() - 1]
        if progress:
            progress(f"day {day}: TDM, twins {'identified' if twins is None else 'updated'}")
        if twins is None:
            # day 0's records: the morning dose, the peak, the evening dose, the trough
            from cohort.twin.twins import Twins

            twins = Twins.identify(prior, new)
        else:
            twins = twins.update(new)
        nxt = 24.0 * (day + 1)
        template = Regimen(amt=1000.0, time=nxt, ii=12.0, addl=1, duration=duration)
        rec = twins.recommend(
            template,
            AUC("conc", LOW, HIGH, start=nxt, end=nxt + 24.0),
            max_dose=3000.0,
            strength=250.0,
            n_draws=n_draws,
            seed=seed + day,
        )
        dose["twin"] = rec["dose"].to_numpy()
    auc = pd.concat(auc_rows, ignore_index=True)
    rows = []
    for (day, arm), g in auc.groupby(["day", "arm"], sort=True):
        a = g["auc"].to_numpy()
        rows.append(
            {
                "day": day,
                "arm": arm,
                "tdm_cycles": 0 if arm == "label" else day,
                "in_target": np.mean((a >= LOW) & (a <= HIGH)),
                "below": np.mean(a < LOW),
                "above": np.mean(a > HIGH),
                "median_auc": float(np.median(a)),
            }
        )
    table = pd.DataFrame(rows)
    table.attrs.update(
        n=n,
        seed=seed,
        target="400 <= AUC(day) <= 600 mg·h/L",
        prior=prior.name,
        citation=prior.spec.citation,
    )
    return MIPDResult(table, auc, pd.concat(dose_rows, ignore_index=True), time.perf_counter() - t0)
