"""Validate CGM twins on UVA/Padova virtual patients with known physiology.

The 30 reference patients (simglucose 0.2.11 parameters) live two days of meals (50/70/80 g,
times jittered by up to ±30 min, sizes by ±15 %) with a bolus at their own carbohydrate
ratio on their usual basal, read by simglucose's CGM noise model (Johnson-SU, AR(1)). Each
twin (t1d_minimal, priors/t1d_cgm_twin.toml) is identified from day 1 and updated with day
2; then both days are replayed with boluses x0.8 and basal x1.2 and compared with the same
patients simulated by UVA/Padova under that therapy (the truth a twin cannot see).

Reported (JSON in validation/results/t1d_twin.json): fit MARD to the CGM readings after each
day; replay MARD of the twin's median to the true (noise-free) replay; coverage of the true
replay's glycaemic metrics by the twins' 90 % credible intervals; the change in mean glucose
under each single therapy change (boluses x0.8 alone, basal x1.2 alone) against UVA/Padova's,
with the coverage of its 90 % interval; NUTS convergence and time when ``--nuts``.
Run: ``python validation/t1d_twin.py [--nuts] [--patients N] [--prior spec.toml]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cohort.glucose.metrics import metric_arrays, time_weights
from cohort.models.glucose import reference_patients
from cohort.twin.cgm import CGMTwins
from cohort.twin.cgm_synthetic import meal_plan, uva_days

PRIOR = str(Path(__file__).resolve().parents[1] / "priors" / "t1d_cgm_twin.toml")
METRICS = ("tir_70_180", "tbr_70", "tar_180", "mean")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nuts", action="store_true", help="NUTS posteriors (default Laplace)")
    ap.add_argument("--patients", type=int, default=30, help="first N reference patients")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="JSON (default validation/results/)")
    ap.add_argument("--prior", default=PRIOR, help="twin prior spec (default: the shipped one)")
    args = ap.parse_args(argv)
    method = "nuts" if args.nuts else "laplace"
    pts = reference_patients().iloc[: args.patients].reset_index(drop=True)
    n = len(pts)
    times, grams = meal_plan(n, 2, seed=args.seed, jitter=30)
    table, _ = uva_days(pts, times, grams, 2, seed=args.seed)
    _, truth = uva_days(pts, times, grams, 2, bolus_scale=0.8, basal_scale=1.2, sensor=None)
    day1, day2 = table[table.TIME < 1440], table[table.TIME >= 1440]

    t0 = time.perf_counter()
    tw1 = CGMTwins.identify(args.prior, day1, method=method)
    t_day1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    tw2 = tw1.update(day2.drop(columns=["BW"]))
    t_day2 = time.perf_counter() - t0

    rep = tw2.replay(bolus_scale=0.8, basal_scale=1.2, n_draws=200)
    k = rep["time"].values.astype(int) // 5
    keep = k < truth.shape[1]  # the replay includes the end point of the last 5 min
    true = truth[:, k[keep]]
    med = rep["glucose_q"].sel(quantile=0.5).values[:, keep]
    replay_mard = 100 * np.mean(np.abs(med - true) / true, axis=1)
    true_met = metric_arrays(true, time_weights(rep["time"].values[keep]))
    cover = {}
    for m in METRICS:
        lo = rep[f"{m}_q"].sel(quantile=0.05).values
        hi = rep[f"{m}_q"].sel(quantile=0.95).values
        tol = 0.5 if m != "mean" else 0.0  # percent-of-time metrics: half a percent slack
        cover[m] = float(np.mean((lo - tol <= true_met[m]) & (true_met[m] <= hi + tol)))
    out = {
        "patients": n,
        "method": method,
        "fit_mard_day1": _summary(tw1.fitted().mard.values),
        "fit_mard_day1_2": _summary(tw2.fitted().mard.values),
        "replay_mard_vs_truth": _summary(replay_mard),
        "replay_metric_coverage_90": cover,
        "seconds_identify_day1": round(t_day1, 1),
        "seconds_update_day2": round(t_day2, 1),
    }
    out["single_change"] = _changes(pts, times, grams, tw2)
    for tag, tw in (("day1", tw1), ("day1_2", tw2)):
        if tw.samples is not None:
            out[f"nuts_{tag}"] = {
                "converged": int(tw.samples.converged.sum()),
                "max_rhat": float(tw.samples.rhat.max()),
                "min_ess_bulk": float(tw.samples.ess_bulk.min()),
                "sampling_seconds": round(tw.samples.seconds, 1),
            }
    print(json.dumps(out, indent=2))
    path = args.out or Path(__file__).parent / "results" / f"t1d_twin_{method}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def _changes(pts, times, grams, tw) -> dict:
    """The twins' change in mean glucose under each single therapy change, against
    UVA/Padova's: paired per posterior draw (same draws with and without the change), the
    median ratio twin/truth and how often the 90 % interval of the change covers the true
    change. The default replay (boluses x0.8 with basal x1.2) nearly cancels and hides a
    change too small (a probe, 2026-12-06)."""
    cases = {"usual": (1.0, 1.0), "bolus_x0.8": (0.8, 1.0), "basal_x1.2": (1.0, 1.2),
             "both": (0.8, 1.2)}  # fmt: skip
    mean_true, mean_twin = {}, {}
    for case, (b, s) in cases.items():
        _, true = uva_days(pts, times, grams, 2, bolus_scale=b, basal_scale=s, sensor=None)
        mean_true[case] = true.mean(axis=1)
        mean_twin[case] = tw.replay(bolus_scale=b, basal_scale=s, n_draws=200)["mean"].values
    out = {}
    for case in ("bolus_x0.8", "basal_x1.2", "both"):
        d_true = mean_true[case] - mean_true["usual"]
        d_twin = mean_twin[case] - mean_twin["usual"]  # [patient, draw]
        lo, med, hi = np.quantile(d_twin, [0.05, 0.5, 0.95], axis=1)
        out[case] = {
            "true_change_median": round(float(np.median(d_true)), 2),
            "twin_change_median": round(float(np.median(med)), 2),
            "ratio_median": round(float(np.median(med / d_true)), 3),
            "coverage_90": round(float(np.mean((lo <= d_true) & (d_true <= hi))), 3),
        }
    return out


def _summary(x) -> dict:
    x = np.asarray(x, float)
    return {"median": round(float(np.median(x)), 2), "p90": round(float(np.quantile(x, 0.9)), 2),
            "max": round(float(np.max(x)), 2)}  # fmt: skip


if __name__ == "__main__":
    main()
