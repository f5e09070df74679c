"""Calibration of CGM twins' forecasts: a twin identified from day 1 predicts day 2's CGM
readings (day 2's meals and insulin given) with 50 % and 90 % posterior-predictive bands; how
often do the bands cover the readings?

Data: the 30 UVA/Padova reference patients (simglucose 0.2.11 parameters), two days of
jittered meals with boluses at their carbohydrate ratio, simglucose's CGM noise. The twins
(t1d_minimal, the shipped prior unless ``--prior``) are identified from day 1 only, and
forecast day 2 with :meth:`cohort.twin.CGMTwins.forecast`, as a user would: each posterior
draw's curve, its AR(1) residual started at the last day-1 reading's, and (with the prior's
``[iov]``) day 2's own factor of Gb drawn from its prior. UVA/Padova is not t1d_minimal:
this is a forecast of a misspecified model, as a real patient's would be. The prior's
``[iov]`` was estimated on other virtual patients (``validation/t1d_iov_prior.py``); these
30 are held out.
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
from cohort.twin.cgm import CGMTwins
from cohort.twin.cgm_synthetic import meal_plan, uva_days

PRIOR = str(Path(__file__).resolve().parents[1] / "priors" / "t1d_cgm_twin.toml")


def coverage(fc, table: pd.DataFrame, ids, start: float, end: float) -> dict:
    """Fraction of readings in ``[start, end)`` inside the forecast's 50 % and 90 % bands."""
    times = fc.time.to_numpy()
    lo90, lo50, hi50, hi90 = (fc.cgm_q.sel(quantile=q).to_numpy() for q in (0.05, 0.25, 0.75, 0.95))
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
    fc = tw1.forecast(table[table.TIME >= 1440].drop(columns="CGM"), n_draws=args.draws)
    out = {
        "patients": len(pts),
        "method": method,
        "prior": Path(args.prior).name,
        "day2_forecast": coverage(fc, table, tw1.ids, 1440.0, 2880.0),
        "fit_mard_median": round(float(np.median(tw1.fitted().mard.values)), 2),
    }
    print(json.dumps(out, indent=2))
    path = args.out or Path(__file__).parent / "results" / f"t1d_calibration_{method}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
