"""Every engine once on the default JAX backend: first-call seconds, solve status and the
agreement of the fast and closed-form paths with the diffrax path (a GPU machine's first check)."""

import time

import jax
import numpy as np

import cohort

print("backend", jax.default_backend(), jax.devices(), "jax", jax.__version__)
model = cohort.models.get("pk2_oral_idr")
pop = {k: np.full(1000, float(v)) for k, v in model.defaults().items()}
dose = cohort.Regimen(amt=320, cmt="depot")
times = cohort.grid(0, 24, 1 / 12)
ref = None
for method, dtype in (("diffrax", "float64"), ("fast", "float64"), ("fast", "float32")):
    t0 = time.perf_counter()
    ds = cohort.simulate(model, pop, dose, times, method=method, dtype=dtype)
    c = ds.conc.values
    ref = c if ref is None else ref
    print(
        f"{method:8s} {dtype}: {time.perf_counter() - t0:6.2f} s first call, status ok "
        f"{int((ds.status.values == 0).sum())}, max |conc - diffrax| {np.abs(c - ref).max():.2e}"
    )
pk = cohort.models.get("pk2_oral")
ds = cohort.simulate(pk, {k: pop[k] for k in pk.parameter_names}, dose, times, method="closed_form")
print("closed_form max |conc - diffrax|", float(np.abs(ds.conc.values - ref).max()))
