"""Forecast calibration of digital twins on simulated patients with known parameters.

For each prior: patients (covariates and parameters) drawn from the population, dosed, sampled
with the prior's residual error; twins identified from the early samples forecast the later
ones. Reported: how often the 50 % and 90 % bands of the next measurement cover the held-out
observations (nominal 0.50 / 0.90), per model, for the Laplace posterior (and NUTS with
``--nuts``). Writes ``benchmarks/results/twin_calibration.json``.

    python validation/twin_calibration.py [--n 500] [--nuts]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cohort.dosing import Regimen
from cohort.twin import TwinPrior, Twins
from cohort.twin.synthetic import simulate_records

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "vancomycin_goti2018 (pk2_iv)": (
        "priors/vancomycin_goti2018.toml",
        Regimen(amt=1000.0, ii=12.0, addl=5, duration=1.0),
        [2.5, 11.75],
        [26.5, 35.75, 47.75],
    ),
    "neonate_phenobarbital (pk1_iv)": (
        "priors/neonate_phenobarbital.toml",
        Regimen(amt=20.0, ii=12.0, addl=7),
        [2.0, 11.9],
        [35.9, 59.9, 95.9],
    ),
}


def coverage(prior_path, regimen, seen, held, n, method, seed=3) -> dict:
    prior = TwinPrior.from_spec(ROOT / prior_path)
    records, _ = simulate_records(prior, n, seen + held, regimen, seed=seed)
    train = records[(records.EVID == 1) | records.TIME.isin(seen)]
    tw = Twins.identify(prior, train, method=method, warmup=300, draws=300)
    fc = tw.forecast(None, held, n_draws=500, seed=seed, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95))
    test = records[(records.EVID == 0) & records.TIME.isin(held)]
    obs = test.pivot(index="ID", columns="TIME", values="DV").loc[tw.ids, held].to_numpy()
    band = fc[f"{prior.output}_obs"]

    def cov(lo, hi):
        return float(
            np.mean(
                (obs >= band.sel(quantile=lo).to_numpy())
                & (obs <= band.sel(quantile=hi).to_numpy())
            )
        )

    return {
        "patients": n,
        "held_out": int(obs.size),
        "method": method,
        "coverage_50": cov(0.25, 0.75),
        "coverage_90": cov(0.05, 0.95),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--nuts", action="store_true", help="also NUTS posteriors (200 patients)")
    args = ap.parse_args()
    rows = {}
    for name, (path, reg, seen, held) in CASES.items():
        rows[f"{name}, laplace"] = coverage(path, reg, seen, held, args.n, "laplace")
        if args.nuts:
            rows[f"{name}, nuts"] = coverage(path, reg, seen, held, 200, "nuts")
    for k, v in rows.items():
        print(
            f"{k}: 50 % band covers {v['coverage_50']:.3f}, 90 % band {v['coverage_90']:.3f} "
            f"({v['held_out']} held-out observations)"
        )
    out = ROOT / "benchmarks" / "results" / "twin_calibration.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
