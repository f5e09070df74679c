"""Estimate the inter-occasion variability (``[iov]``) of priors/t1d_cgm_twin.toml from
held-out days of virtual patients that are not the 30 reference patients.

A twin identified from one day of CGM cannot see how far the next day will stray from it:
one day leaves the day-to-day variation unidentified (a day's factor trades against the
patient's own value), so its size is estimated from forecasts of days the twins have not
seen, by a proper scoring rule:

* 30 plausible UVA/Padova patients (:func:`cohort.glucose.patients.sample_plausible`, 10
  per group, seed 21: new draws from the simulator's population, screened on a standard
  day) live two days of jittered meals (±30 min, ±15 %) with boluses at their own
  carbohydrate ratio, read by simglucose's CGM noise;
* for each candidate log-SD of the day factor of Gb, MAP + Laplace twins are identified from
  day 1 and forecast day 2 from its meals and insulin (:meth:`CGMTwins.forecast`, 400
  draws);
* the score is the mean interval score of the day-2 readings by the forecast's 90 % bands
  (Gneiting & Raftery 2007: the band's width plus 20× how far a reading falls outside it;
  the proper score of a central 90 % interval, what the twins' users read; mg/dL, lower is
  better); the CRPS (the whole predictive distribution; from the forecast's draws) and the
  90 %/50 % band coverage are reported beside it.

The candidate with the best interval score is the shipped prior's value. The 30 reference
patients are kept out: they are the validation set of ``validation/t1d_calibration.py``.
Run: ``python validation/t1d_iov_prior.py`` (about ten minutes)
-> ``validation/results/t1d_iov_prior.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cohort._toml import read_toml
from cohort.glucose.patients import sample_plausible
from cohort.twin.cgm import CGMTwins
from cohort.twin.cgm_synthetic import meal_plan, uva_days
from cohort.twin.prior import TwinError, TwinPrior

PRIOR = Path(__file__).resolve().parents[1] / "priors" / "t1d_cgm_twin.toml"
CANDIDATES = (0.0, 0.05, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25)


def training_patients(per_group: int, seed: int) -> pd.DataFrame:
    groups = [sample_plausible(g, per_group, seed) for g in ("adolescent", "adult", "child")]
    return pd.concat(groups, ignore_index=True)


def prior_with_iov(sd: float) -> TwinPrior:
    """The shipped prior with a day factor of Gb of log-SD ``sd`` (none when 0)."""
    raw, _, _ = read_toml(str(PRIOR), TwinError, "priors spec")
    raw = {k: v for k, v in raw.items() if k != "iov"}
    if sd > 0:
        raw["iov"] = {"parameters": ["Gb"], "sd": [sd], "interval": 1440.0, "citation": "trial"}
    return TwinPrior.from_raw(raw, f"<iov {sd}>")


def crps(draws: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of samples ``draws [S, M]`` at observations ``y [M]``: E|X − y| − ½E|X − X'|."""
    x = np.sort(draws, axis=0)
    m = x.shape[0]
    spread = (2.0 / m**2) * np.sum((2 * np.arange(1, m + 1) - m - 1)[:, None] * x, axis=0)
    return np.mean(np.abs(x - y), axis=0) - 0.5 * spread


def day_two_scores(fc, table: pd.DataFrame, ids) -> dict:
    """Mean 90 % interval score, CRPS and 90 %/50 % coverage of the day-2 readings by the
    forecast ``fc``."""
    times = fc.time.to_numpy()
    scores, interval, hits90, hits50 = [], [], [], []
    for i, pid in enumerate(ids):
        rows = table[(table.ID == pid) & (table.TIME >= 1440) & table.CGM.notna()]
        k = np.searchsorted(times, rows.TIME.to_numpy(float))
        y = rows.CGM.to_numpy(float)
        draws = fc["cgm"].to_numpy()[i][:, k]
        scores.extend(crps(draws, y))
        lo90, lo50, hi50, hi90 = np.quantile(draws, [0.05, 0.25, 0.75, 0.95], axis=0)
        interval.extend((hi90 - lo90) + 20.0 * (np.maximum(lo90 - y, 0) + np.maximum(y - hi90, 0)))
        hits90.extend((lo90 <= y) & (y <= hi90))
        hits50.extend((lo50 <= y) & (y <= hi50))
    return {
        "interval_score_90": round(float(np.mean(interval)), 3),
        "crps": round(float(np.mean(scores)), 3),
        "coverage_90": round(float(np.mean(hits90)), 4),
        "coverage_50": round(float(np.mean(hits50)), 4),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-group", type=int, default=10)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    pts = training_patients(args.per_group, args.seed)
    times, grams = meal_plan(len(pts), 2, seed=args.seed, jitter=30)
    table, _ = uva_days(pts, times, grams, 2, seed=args.seed)
    day2_plan = table[table.TIME >= 1440].drop(columns="CGM")
    rows = []
    for sd in CANDIDATES:
        tw1 = CGMTwins.identify(prior_with_iov(sd), table[table.TIME < 1440], method="laplace")
        fc = tw1.forecast(day2_plan, n_draws=400, keep_draws=True)
        row = {"iov_sd_gb": sd, **day_two_scores(fc, table, tw1.ids)}
        row["fit_mard_median"] = round(float(np.median(tw1.fitted().mard.values)), 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    best = min(rows, key=lambda r: r["interval_score_90"])
    out = {
        "patients": len(pts),
        "seed": args.seed,
        "candidates": rows,
        "best_iov_sd_gb": best["iov_sd_gb"],
    }
    print(json.dumps(out, indent=2))
    path = args.out or Path(__file__).parent / "results" / "t1d_iov_prior.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
