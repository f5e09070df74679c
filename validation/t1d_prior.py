"""Derive the empirical prior of priors/t1d_cgm_twin_wide.toml (and of Gb, SI, kempt, kabs in
priors/t1d_cgm_twin.toml, whose SG and p2 follow ReplayBG's priors): weakly regularised MAP fits of
t1d_minimal to one noise-free day of each of the 30 UVA/Padova reference patients.

Each patient eats the default meal plan (50/70/80 g at 7:00/12:00/18:30) with a bolus at its
own carbohydrate ratio on its usual basal; the twins are identified (MAP) under the shipped
prior with every log-SD widened to 2 around textbook-scale values. Printed: the median and
SD of the log estimates per parameter and the spec's log-SD: that SD capped at 1 (the
scatter of weakly regularised one-day estimates includes their estimation error, so it
overstates the population's spread), and the fits' median MARD.
Run: ``python validation/t1d_prior.py`` (about a minute).
"""

from __future__ import annotations

import copy
import json

import jax
import numpy as np

from cohort._toml import read_toml
from cohort.models.glucose import reference_patients
from cohort.twin.cgm import CGMTwins
from cohort.twin.cgm_synthetic import meal_plan, uva_days
from cohort.twin.prior import TwinError, TwinPrior

FREE = ["Gb", "SG", "SI", "p2", "kempt", "kabs"]
# Centre of the weak prior: textbook-scale values (oral minimal model in T1D), so the result
# does not depend on the spec it produces.
WEAK_CENTRE = {"Gb": 140.0, "SG": 0.01, "SI": 5e-4, "p2": 0.02, "kempt": 0.05, "kabs": 0.03}


def _weak_fit(raw: dict, free: list[str], table):
    weak = copy.deepcopy(raw)
    omega = (4.0 * np.eye(len(free))).tolist()
    weak["iiv"] = {"parameters": free, "omega": omega, "citation": "weak"}
    for k, v in WEAK_CENTRE.items():
        weak["parameters"][k]["typical"] = v
    prior = TwinPrior.from_raw(weak, "<weak prior>")
    return CGMTwins.identify(prior, table, method="map")


def _stats(med, names) -> dict:
    out = {}
    for name in names:
        logs = np.log(med[name].values)
        sd = float(np.std(logs, ddof=1))
        out[name] = {"median": float(np.exp(np.median(logs))), "sd_log": sd,
                     "spec_sd_log": min(sd, 1.0)}  # fmt: skip
    return out


def main() -> dict:
    jax.config.update("jax_enable_x64", True)
    raw, *_ = read_toml("priors/t1d_cgm_twin.toml", TwinError, "priors spec")
    pts = reference_patients()
    t, g = meal_plan(len(pts), 1, seed=0)
    table, _ = uva_days(pts, t, g, 1, sensor=None)
    twins = _weak_fit(raw, FREE, table)
    out = _stats(twins.parameters().sel(quantile=0.5), FREE)
    out["fit_mard_median"] = float(np.median(twins.fitted().mard.values))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
