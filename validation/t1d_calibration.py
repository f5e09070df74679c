"""Calibration of CGM twins' forecasts: a twin identified from day 1 predicts day 2's CGM
readings (day 2's meals and insulin given) with 50 % and 90 % posterior-predictive bands; how
often do the bands cover the readings?

Data: the 30 UVA/Padova reference patients (simglucose 0.2.11 parameters), two days of
jittered meals with boluses at their carbohydrate ratio, simglucose's CGM noise. The twins
(t1d_minimal, the shipped prior unless ``--prior``) are identified from day 1 only. Bands:
for each posterior draw, the noise-free CGM curve over both days plus that draw's AR(1)
residual process (its SD and correlation per 5 min), drawn stationary (not conditioned on the
last day-1 residual, so the first readings of day 2 get slightly wide bands). UVA/Padova is
not t1d_minimal: this is a forecast of a misspecified model, as a real patient's would be.
Run: ``python validation/t1d_calibration.py [--nuts] [--patients N] [--prior spec.toml]``
-> ``validation/results/t1d_calibration_<method>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.models.glucose import reference_patients
from cohort.twin import cgm_data
from cohort.twin.cgm import CGMTwins
from cohort.twin.cgm_likelihood import layout, natural
from cohort.twin.cgm_synthetic import meal_plan, uva_days

PRIOR = str(Path(__file__).resolve().parents[1] / "priors" / "t1d_cgm_twin.toml")
STEP = 5.0


def predictive(twins: CGMTwins, n_draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(times [T], draws [N, S, T])``: CGM readings predicted by each posterior draw, with
    its residual noise, on the 5-min grid of the twins' records."""
    lay = layout(twins.prior)
    rep = twins.replay(n_draws=n_draws, step=STEP, output="CGM", seed=seed)
    g = rep["glucose"].values  # [N, S, T], noise-free; the same draws as _z_draws(S, seed)
    nat = natural(lay, twins._z_draws(n_draws, seed))  # [N, S, q]
    sigma = nat[..., lay.names.index("sigma")][..., None]
    rho = nat[..., lay.names.index("ar1")] ** (STEP / lay.ar1_interval)
    rng = np.random.default_rng(seed)
    e = np.empty(g.shape)
    e[..., 0] = rng.standard_normal(g.shape[:2])
    scale = np.sqrt(1.0 - rho**2)
    for k in range(1, g.shape[-1]):
        e[..., k] = rho * e[..., k - 1] + scale * rng.standard_normal(g.shape[:2])
    return rep["time"].values, g + sigma * e


def coverage(times, draws, table: pd.DataFrame, ids, start: float, end: float) -> dict:
    """Fraction of readings in ``[start, end)`` inside the 50 % and 90 % bands."""
    lo90, lo50, hi50, hi90 = np.nanquantile(draws, [0.05, 0.25, 0.75, 0.95], axis=1)
    hits = {"50": [], "90": []}
    for i, pid in enumerate(ids):
        rows = table[(table.ID == pid) & (table.TIME >= start) & (table.TIME < end)]
        rows = rows[rows.CGM.notna()]
        k = np.searchsorted(times, rows.TIME.to_numpy(float))
        y = rows.CGM.to_numpy(float)
        hits["50"].extend((lo50[i, k] <= y) & (y <= hi50[i, k]))
        hits["90"].extend((lo90[i, k] <= y) & (y <= hi90[i, k]))
    return {f"coverage_{b}": round(float(np.mean(v)), 4) for b, v in hits.items()} | {
        "readings": len(hits["90"])
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nuts", action="store_true", help="NUTS posteriors (default Laplace)")
    ap.add_argument("--patients", type=int, default=30, help="first N reference patients")
    ap.add_argument("--draws", type=int, default=400, help="posterior-predictive draws")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--prior", default=PRIOR, help="twin prior spec (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default validation/results/)")
    args = ap.parse_args(argv)
    method = "nuts" if args.nuts else "laplace"
    pts = reference_patients().iloc[: args.patients].reset_index(drop=True)
    times, grams = meal_plan(len(pts), 2, seed=args.seed, jitter=30)
    table, _ = uva_days(pts, times, grams, 2, seed=args.seed)
    tw1 = CGMTwins.identify(args.prior, table[table.TIME < 1440], method=method)
    # day 1's posterior over both days' records: day 2 is forecast from day 2's inputs alone
    both = CGMTwins(tw1.prior, cgm_data.read_cgm(table), tw1.posterior, tw1.samples, tw1.eat_rate)
    t, draws = predictive(both, args.draws, 0)
    out = {
        "patients": len(pts),
        "method": method,
        "prior": Path(args.prior).name,
        "day2_forecast": coverage(t, draws, table, both.ids, 1440.0, 2880.0),
        "day1_fit": coverage(t, draws, table, both.ids, 0.0, 1440.0),
    }
    print(json.dumps(out, indent=2))
    path = args.out or Path(__file__).parent / "results" / f"t1d_calibration_{method}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
