"""Fast path with an RK4 step spanning several save intervals (Hermite dense output)."""

from __future__ import annotations

import numpy as np
import pytest

import cohort
from cohort import FastOptions, Regimen
from cohort.engine.fast_path import save_intervals_per_step

MODEL = cohort.models.get("pk2_oral")
TIMES = cohort.grid(0.0, 24.0, 0.1)
RNG = np.random.default_rng(11)
N = 9
POP = {
    "CL": 3.0 * np.exp(0.3 * RNG.standard_normal(N)),
    "V1": 30.0 * np.exp(0.3 * RNG.standard_normal(N)),
    "Q": 4.0 * np.exp(0.3 * RNG.standard_normal(N)),
    "V2": 60.0 * np.exp(0.3 * RNG.standard_normal(N)),
    "KA": 1.2 * np.exp(0.3 * RNG.standard_normal(N)),
}
# Patients 0-2 single dose at 0; 3-5 repeated doses off the save grid; 6-8 an infusion.
DOSING = (
    [[Regimen(300.0, "depot")]] * 3
    + [[Regimen(200.0, "depot", time=1.03, ii=7.77, addl=2)]] * 3
    + [[Regimen(150.0, "central", time=4.96, duration=2.35)]] * 3
)


def _max_rel_err(ds, ref):
    x, r = ds.conc.values, ref.conc.values
    return float(np.max(np.max(np.abs(x - r), axis=1) / np.max(np.abs(r), axis=1)))


def test_intervals_per_step():
    assert save_intervals_per_step(TIMES, 0.05) == 1
    assert save_intervals_per_step(TIMES, 0.1) == 1
    assert save_intervals_per_step(TIMES, 0.3) == 3
    assert save_intervals_per_step(TIMES, 0.35) == 3
    assert save_intervals_per_step(np.array([0.0, 0.1, 0.3]), 0.4) == 1  # not uniform
    assert save_intervals_per_step(TIMES, 1e3) == len(TIMES) - 1


def test_dense_output_is_fourth_order():
    exact = cohort.simulate(MODEL, POP, DOSING, TIMES, method="closed_form")
    errs = [
        _max_rel_err(
            cohort.simulate(MODEL, POP, DOSING, TIMES, method="fast", options=FastOptions(dt=dt)),
            exact,
        )
        for dt in (0.4, 0.2)
    ]
    assert errs[1] < 1.5e-4  # measured 7.1e-5 (0.4 h: 1.4e-3)
    assert errs[0] / errs[1] > 10.0  # 2^4 = 16 for a fourth-order method


@pytest.mark.parametrize("dt", [0.3, 0.5])
def test_batch_equals_single_patients_with_dense_blocks(dt):
    opts = FastOptions(dt=dt)
    batch = cohort.simulate(MODEL, POP, DOSING, TIMES, method="fast", options=opts)
    for i in (0, 4, 7):  # one of each regimen, alone: blocks are eventful for other patients
        pop = {k: v[i : i + 1] for k, v in POP.items()}
        single = cohort.simulate(MODEL, pop, [DOSING[i]], TIMES, method="fast", options=opts)
        np.testing.assert_allclose(single.conc.values[0], batch.conc.values[i], rtol=1e-12)
