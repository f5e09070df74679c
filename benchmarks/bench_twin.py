"""Digital-twin timings on this machine (issue 15 targets on 2 CPU cores): 10,000 PK twins
MAP + Laplace updated in one batch < 10 s; 1,000 PK twins with converged per-patient NUTS
posteriors (R-hat < 1.01, bulk ESS > 400) < 5 min.

Vancomycin (Goti 2018 prior, two-compartment IV): simulated patients with known parameters,
day-0 TDM (peak + trough) then day-1 TDM as the update. Baselines run in this process: a
scipy per-patient MAP loop (BFGS on the same compiled negative log posterior and gradient,
one patient at a time, as MIPD tools do) and numpyro's ``MCMC`` run per patient, each on a
subset and scaled to the full count.

    python benchmarks/bench_twin.py            # 10,000 MAP twins, 1,000 NUTS twins
    python benchmarks/bench_twin.py --quick    # 2,000 and 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, OtherLoad, machine_info, write_json  # noqa: E402

import cohort  # noqa: E402

# as the CLI does: one JAX CPU device per core (each patient's NUTS chains split over them)
cohort.use_cpu_cores()
from cohort.dosing import Regimen  # noqa: E402
from cohort.twin import TwinPrior, Twins  # noqa: E402
from cohort.twin.synthetic import simulate_records  # noqa: E402

PRIOR = Path(__file__).resolve().parents[1] / "priors" / "vancomycin_goti2018.toml"
DAY0, DAY1 = [2.5, 11.75], [26.5, 35.75]


def data(n: int, seed: int = 1):
    prior = TwinPrior.from_spec(PRIOR)
    reg = Regimen(amt=1000.0, ii=12.0, addl=3, duration=1.0)
    records, truth = simulate_records(prior, n, DAY0 + DAY1, reg, seed=seed)
    first = records[(records.EVID == 1) | records.TIME.isin(DAY0)]
    later = records[(records.EVID == 0) & records.TIME.isin(DAY1)]
    return prior, first, later, truth


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def scipy_map_loop(tw: Twins, n: int) -> float:
    """Seconds per patient for a per-patient scipy BFGS MAP on the same objective."""
    import jax
    import scipy.optimize

    from cohort.inference import laplace
    from cohort.twin.problem import prior_pop

    bm, pop = tw.bound, prior_pop(tw.prior)
    omega_inv, _ = laplace.omega_inverse(bm, pop)
    d_all = laplace.subject_data(bm.arrays)
    vg = jax.jit(jax.value_and_grad(lambda e, d: 0.5 * laplace.objective(bm, pop, e, d, omega_inv)))
    q = len(tw.prior.eta_names)
    one = {k: jax.tree_util.tree_map(lambda a: a[0], v) for k, v in d_all.items()}
    vg(np.zeros(q), one)  # compile outside the timing
    t0 = time.perf_counter()
    for i in range(n):
        d = {k: jax.tree_util.tree_map(lambda a, i=i: a[i], v) for k, v in d_all.items()}

        def f(e, d=d):
            v, g = vg(e, d)
            return float(v), np.asarray(g)

        res = scipy.optimize.minimize(f, np.zeros(q), jac=True, method="BFGS")
        assert res.hess_inv.shape == (q, q)  # its (approximate) Laplace covariance
    return (time.perf_counter() - t0) / n


def numpyro_loop(tw: Twins, n: int, warmup: int, draws: int) -> float:
    """Seconds per patient for numpyro MCMC (NUTS, 4 vectorised chains) per patient."""
    import jax
    from numpyro.infer import MCMC, NUTS

    from cohort.inference import laplace
    from cohort.twin.problem import prior_pop

    bm, pop = tw.bound, prior_pop(tw.prior)
    omega_inv, _ = laplace.omega_inverse(bm, pop)
    d_all = laplace.subject_data(bm.arrays)
    q = len(tw.prior.eta_names)
    times = []
    for i in range(n):
        d = {k: jax.tree_util.tree_map(lambda a, i=i: a[i], v) for k, v in d_all.items()}
        kernel = NUTS(potential_fn=lambda e, d=d: 0.5 * laplace.objective(bm, pop, e, d, omega_inv))
        mcmc = MCMC(
            kernel,
            num_warmup=warmup,
            num_samples=draws,
            num_chains=4,
            chain_method="vectorized",
            progress_bar=False,
        )
        t0 = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(i), init_params=np.zeros((4, q)))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--map-only", action="store_true", help="skip the NUTS rows")
    ap.add_argument("--nuts-only", action="store_true", help="skip the MAP rows")
    ap.add_argument("--warmup", type=int, default=250, help="NUTS warmup (default: the API's)")
    args = ap.parse_args()
    n_map, n_nuts = (2_000, 200) if args.quick else (10_000, 1_000)
    rows = {}
    if not args.nuts_only:
        rows["map_laplace"] = map_rows(n_map)
        if args.map_only:
            write_json(RESULTS_DIR / "twin_map.json", {"machine": machine_info(), "rows": rows})
            return
    rows["nuts"] = nuts_rows(n_nuts, args.warmup)
    name = "twin_quick.json" if args.quick else "twin.json"
    if args.warmup != 250:
        name = name.replace(".json", f"_warmup{args.warmup}.json")
    out = RESULTS_DIR / name
    if args.nuts_only and out.exists():  # keep the MAP rows of an earlier full run
        import json

        rows = {**json.loads(out.read_text()).get("rows", {}), **rows}
    write_json(out, {"machine": machine_info(), "rows": rows})
    print(f"wrote {out}")


def map_rows(n_map: int) -> dict:
    prior, first, later, truth = data(n_map)
    with OtherLoad() as load:
        tw, t_identify = timed(lambda: Twins.identify(prior, first))
        tw2, t_update = timed(lambda: tw.update(later))
        _, t_update_warm = timed(lambda: tw.update(later))
    err = np.abs(np.log(tw2.individual()["CL"].to_numpy() / truth["CL"]))
    base = scipy_map_loop(tw2, 200)
    row = {
        "patients": n_map,
        "identify_cold_s": t_identify,
        "update_cold_s": t_update,
        "update_warm_s": t_update_warm,
        "ok_fraction": float(tw2.ok.mean()),
        "median_abs_log_error_CL": float(np.median(err)),
        "baseline_scipy_bfgs_loop_s_per_patient": base,
        "baseline_scipy_bfgs_loop_s_total_extrapolated": base * n_map,
        "speedup_vs_scipy_loop_warm": base * n_map / t_update_warm,
        "other_load_cores": load.value,
    }
    print(
        f"MAP+Laplace, {n_map} twins: identify {t_identify:.1f} s (cold), update "
        f"{t_update:.1f} s cold / {t_update_warm:.1f} s warm; scipy loop "
        f"{base * n_map:.1f} s -> {base * n_map / t_update_warm:.1f}x"
    )
    return row


def nuts_rows(n_nuts: int, warmup: int) -> dict:
    prior, first, later, truth = data(n_nuts, seed=2)
    records = pd.concat([first, later]).sort_values(["ID", "TIME"], kind="stable")
    with OtherLoad() as load:
        nu, t_nuts = timed(
            lambda: Twins.identify(prior, records, method="nuts", warmup=warmup, draws=500)
        )
    s = nu.samples
    base = numpyro_loop(nu, 3, warmup, 500)
    row = {
        "patients": n_nuts,
        "chains": 4,
        "warmup": warmup,
        "draws_per_chain": 500,
        "seconds": t_nuts,
        "converged_fraction": float(s.converged.mean()),
        "max_rhat": float(s.rhat.max()),
        "min_ess_bulk": float(s.ess_bulk.min()),
        "divergences": int(s.divergences.sum()),
        "baseline_numpyro_mcmc_per_patient_s": base,
        "baseline_extrapolated_s": base * n_nuts,
        "speedup_vs_numpyro_loop": base * n_nuts / t_nuts,
        "other_load_cores": load.value,
    }
    print(
        f"NUTS, {n_nuts} twins x 4 chains x ({warmup} + 500): {t_nuts:.1f} s, converged "
        f"{s.converged.mean():.1%} (max R-hat {s.rhat.max():.4f}, min ESS "
        f"{s.ess_bulk.min():.0f}); numpyro per-patient loop {base * n_nuts:.0f} s -> "
        f"{base * n_nuts / t_nuts:.1f}x"
    )
    return row


if __name__ == "__main__":
    main()
