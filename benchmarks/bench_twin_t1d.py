"""CGM (type 1 diabetes) twin timings on this machine (issue 15: one patient-day twin with
converged NUTS chains — R-hat < 1.01, bulk ESS > 400 — in < 60 s, fit MARD <= 8 %; 100
twins in one batch, time per patient-day reported).

Data: UVA/Padova reference patients (simglucose 0.2.11 parameters), one day of three meals
with boluses, simglucose's CGM noise. Public API only, user defaults (``CGMTwins.identify``
with NUTS 4 × (500 + 1000), tree depth 8). Baseline in this process: the gradient of the same
log-likelihood with the trajectory solved by diffrax (Tsit5, rtol 1e-6, the accuracy of our
parallel-in-time solution against the ODE: < 0.15 mg/dL), the sequential solve a NUTS run
would otherwise differentiate; ReplayBG (MATLAB, gradient-free MCMC) reports 37 min - 2.4 h
per patient-day on 2 cores.

    python benchmarks/bench_twin_t1d.py             # 1 patient NUTS, 100 Laplace, 10 NUTS
    python benchmarks/bench_twin_t1d.py --batch 100 # 100 NUTS twins in one batch (long)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, first_call, machine_info, write_json  # noqa: E402

import cohort  # noqa: E402

# as the CLI does: one JAX CPU device per core (each patient's NUTS chains split over them)
cohort.use_cpu_cores()
from cohort.models.glucose import reference_patients  # noqa: E402
from cohort.twin import CGMTwins  # noqa: E402
from cohort.twin.cgm_synthetic import meal_plan, uva_days  # noqa: E402

PRIOR = Path(__file__).resolve().parents[1] / "priors" / "t1d_cgm_twin.toml"


def day(n: int, seed: int = 3):
    pts = reference_patients().iloc[np.arange(n) % 30].reset_index(drop=True)
    times, grams = meal_plan(n, 1, seed=seed, jitter=30)
    table, _ = uva_days(pts, times, grams, 1, seed=seed)
    return table


def gradient_ratio(table) -> dict:
    """Seconds per gradient of one patient's log-likelihood: ours vs diffrax (Tsit5)."""
    import diffrax
    import jax
    import jax.numpy as jnp

    from cohort.models import get
    from cohort.twin import cgm, cgm_likelihood

    tw = CGMTwins(cgm.TwinPrior.from_spec(PRIOR), cgm.cgm_data.read_cgm(table), None, None)
    lay, grid, data, make, chol = tw._bound()
    d0 = jax.tree_util.tree_map(lambda a: a[0], data)
    u = make(chol)
    ours = jax.jit(jax.grad(lambda e: u(e, d0)))
    model = get("t1d_minimal")
    meal, ins = d0["meal"], d0["basal"] + d0["bolus"]
    obs_t = d0["obs_idx"].astype(float)

    def loglik_diffrax(eta):
        z = d0["mu"] + chol @ eta
        # one day, one occasion: the day's factor of Gb folded into Gb (the ODE model takes
        # scalar parameters)
        p = cgm_likelihood.model_params(dataclasses.replace(lay, iov=(), n_occ=1), z, d0)
        if lay.iov:
            k = lay.iov_index
            for j, name in enumerate(lay.iov):
                p[name] = p[name] * jnp.exp(z[k + j])

        def rhs(t, y, _):
            k = jnp.clip(jnp.floor(t).astype(int), 0, meal.shape[0] - 1)
            dy = model.rhs(
                t,
                dict(zip(model.state_names, y)),
                p,
                {"qsto1": meal[k], "Isc1": ins[k] - p["basal"]},
            )
            return tuple(dy[s] for s in model.state_names)

        y0 = tuple(model.initial(p)[s] for s in model.state_names)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(rhs), diffrax.Tsit5(), 0.0, float(meal.shape[0]), 1.0, y0,
            saveat=diffrax.SaveAt(ts=obs_t), max_steps=20_000,
            stepsize_controller=diffrax.PIDController(
                rtol=1e-6, atol=1e-8, jump_ts=jnp.arange(0.0, meal.shape[0])
            ),
        )  # fmt: skip
        ig = sol.ys[model.state_names.index("IG")]
        return jnp.sum(d0["mask"] * (d0["dv"] - ig) ** 2)

    theirs = jax.jit(jax.grad(loglik_diffrax))
    eta = jnp.zeros(chol.shape[0])
    out = {}
    for name, fn, reps in (("parallel_in_time", ours, 200), ("diffrax_tsit5", theirs, 3)):
        fn(eta).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(eta).block_until_ready()
        out[name] = (time.perf_counter() - t0) / reps
    out["ratio"] = out["diffrax_tsit5"] / out["parallel_in_time"]
    return out


def run_identify(table, method: str) -> dict:
    t0 = time.perf_counter()
    tw, profile = first_call(lambda: CGMTwins.identify(str(PRIOR), table, method=method))
    seconds = time.perf_counter() - t0
    row = {"method": method, "patients": tw.n, "seconds": round(seconds, 2),
           "trace_s": round(profile["trace_s"], 2), "compile_s": round(profile["compile_s"], 2),
           "seconds_per_patient_day": round(seconds / tw.n, 2),
           "fit_mard_median": round(float(np.median(tw.fitted().mard.values)), 2)}  # fmt: skip
    if tw.samples is not None:
        s = tw.samples
        row.update(converged=int(s.converged.sum()), max_rhat=round(float(s.rhat.max()), 4),
                   min_ess_bulk=round(float(s.ess_bulk.min()), 1))  # fmt: skip
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=10, help="NUTS twins in one batch")
    ap.add_argument("--laplace", type=int, default=100, help="Laplace twins in one batch")
    args = ap.parse_args(argv)
    rows = []
    grad = gradient_ratio(day(1))
    ours, theirs = 1e3 * grad["parallel_in_time"], 1e3 * grad["diffrax_tsit5"]
    print(f"gradient of one patient-day log-likelihood: parallel-in-time {ours:.2f} ms, "
          f"diffrax Tsit5 {theirs:.1f} ms -> {grad['ratio']:.0f}x")  # fmt: skip
    rows.append({"what": "gradient", **grad})
    for n, method in ((1, "nuts"), (args.laplace, "laplace"), (args.batch, "nuts")):
        if n < 1:
            continue
        row = run_identify(day(n), method)
        print(row)
        rows.append({"what": "identify (cold: includes compilation)", **row})
        # written after every row: a long batch row interrupted keeps the others
        write_json(RESULTS_DIR / "twin_t1d.json", {"machine": machine_info(), "rows": rows})


if __name__ == "__main__":
    main()
