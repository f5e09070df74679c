"""CGM twins' test data: UVA/Padova virtual patients (e.g. the 30 reference patients) living
days of meals with boluses at their own carbohydrate ratio, read by a noisy CGM — and the
same days replayed under altered therapy, the truth a twin's replay is checked against."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohort.glucose.sensor import Sensor, noise_series
from cohort.models.glucose import combine, insulin_records, meal_records
from cohort.models.glucose.patients import as_population

DEFAULT_MEALS = ((420.0, 50.0), (720.0, 70.0), (1110.0, 80.0))  # (min of day, g CHO)


def meal_plan(n: int, days: int, seed: int, meals=DEFAULT_MEALS, jitter: float = 0.0):
    """``(times [n, M], grams [n, M])`` for ``days`` days: ``meals`` each day, times moved by
    up to ±``jitter`` min and sizes by ±``jitter``/2 % (uniform), drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    base_t = np.array([t + 1440.0 * d for d in range(days) for t, _ in meals])
    base_g = np.array([g for _ in range(days) for _, g in meals])
    t = base_t + np.round(rng.uniform(-jitter, jitter, (n, base_t.size)))
    g = base_g * (1.0 + rng.uniform(-jitter, jitter, (n, base_g.size)) / 200.0)
    return t, np.round(g)


def uva_days(
    patients: pd.DataFrame,
    times,
    grams,
    days: int,
    *,
    bolus_scale: float = 1.0,
    basal_scale: float = 1.0,
    step: float = 5.0,
    sensor: Sensor | None = Sensor(),
    seed: int = 0,
):
    """Simulate ``patients`` (UVA/Padova parameters with ``CR``) for ``days`` days: returns
    the CGM-twin table (``ID, TIME, CGM, CHO, BOLUS, BASAL, BW``; CGM = Gsub + ``sensor``
    noise, clipped to the sensor's range) and the noise-free ``Gsub [n, T]`` at ``step``."""
    from cohort.engine.simulate import simulate

    n = len(patients)
    pop = as_population(patients)
    pop["basal_scale"] = np.full(n, basal_scale)
    recs = []
    for i in range(n):
        bolus = grams[i] / patients["CR"].to_numpy(float)[i] * bolus_scale
        r = combine(meal_records(times[i], grams[i]), insulin_records(times[i], bolus))
        recs.append(r.assign(ID=i))
    grid = np.arange(0.0, days * 1440.0, step)
    ds = simulate(
        "uva_padova", pop, pd.concat(recs, ignore_index=True), times=grid, outputs=["Gsub"]
    )
    gsub = ds["Gsub"].values
    cgm = gsub.copy()
    if sensor is not None:
        cgm = np.clip(
            gsub + noise_series(sensor, n, grid.size, step, seed), sensor.low, sensor.high
        )
    basal_u_per_h = pop["u2ss"] * pop["BW"] / 6000.0 * 60.0 * basal_scale
    rows = []
    for i in range(n):
        cho = np.zeros(grid.size)
        bolus = np.zeros(grid.size)
        k = np.searchsorted(grid, times[i])
        np.add.at(cho, k, grams[i])
        np.add.at(bolus, k, grams[i] / patients["CR"].to_numpy(float)[i] * bolus_scale)
        basal = np.full(grid.size, np.nan)
        basal[0] = basal_u_per_h[i]
        rows.append(
            pd.DataFrame(
                {
                    "ID": i,
                    "TIME": grid,
                    "CGM": cgm[i],
                    "CHO": cho,
                    "BOLUS": bolus,
                    "BASAL": basal,
                    "BW": pop["BW"][i],
                }  # fmt: skip
            )
        )
    return pd.concat(rows, ignore_index=True), gsub
