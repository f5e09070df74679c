"""Splitting each batch over several devices (shard_map) changes nothing in the results.

The multi-device run happens in a subprocess, because the CPU device count is fixed when JAX
first initialises (this test process keeps its single device).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cohort

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import cohort
    n_dev = cohort.use_cpu_cores(int(sys.argv[1]))
    from cohort import Regimen

    def cases():
        rng = np.random.default_rng(7)
        n = 37  # not a multiple of the chunk or device count: exercises the padding
        pop = {
            "CL": 3.0 * np.exp(0.4 * rng.standard_normal(n)),
            "V1": 30.0 * np.exp(0.3 * rng.standard_normal(n)),
            "KA": 1.0 * np.exp(0.5 * rng.standard_normal(n)),
            "ALAG": rng.uniform(0.0, 1.5, n),
        }
        regimens = [
            [Regimen(320.0, "depot", ii=12.0, addl=2)],
            [Regimen(90.0, "central", time=2.5, rate=30.0), Regimen(200.0, "depot", time=10.5)],
            [],
        ]
        dosing = [regimens[i % 3] for i in range(n)]
        times = cohort.grid(0.0, 24.0, 0.5)
        out = {}
        full = sys.argv[2] == "full"
        for model, method in [
            ("pk2_oral", "closed_form"),
            ("pk2_oral_idr", "fast"),
            ("pk2_oral_idr", "diffrax"),
        ][: 3 if full else 2]:
            for dtype in ("float64", "float32") if full else ("float64",):
                if method == "diffrax" and dtype == "float32":
                    continue
                ds = cohort.simulate(
                    model, pop, dosing, times, method=method, dtype=dtype, chunk_size=11,
                    outputs=["conc"],
                )
                out[f"{model}/{method}/{dtype}"] = ds.conc.values.tolist()
                out[f"{model}/{method}/{dtype}/status"] = ds.status.values.tolist()
        # a stiff model: the implicit solver (Kvaerno5) cannot run inside shard_map (lineax
        # checks its iterate's structure, sharding included), so its batches stay on one
        # device; it used to fail with "pytree does not match out_structure"
        tm = cohort.simulate(
            "tmdd_qss", None, Regimen(100.0, "central", ii=12.0, addl=1),
            cohort.grid(0.0, 24.0, 2.0), n=5, chunk_size=3,
        )
        out["tmdd_qss/auto"] = tm.conc.values.tolist()
        out["tmdd_qss/auto/status"] = tm.status.values.tolist()
        # the glucose closed loop goes through the same chunk loop: 5 reference adults,
        # chunks of 3 (split 2 + 2 over two devices, the second chunk padded)
        from cohort.glucose import fixed_scenario, run
        from cohort.glucose.loop import ClosedLoopOptions
        from cohort.glucose.sensor import Sensor
        from cohort.models.glucose import reference_patients

        g = run(
            reference_patients("adult").iloc[:5], fixed_scenario(5, 1), "pid", days=0.5,
            seed=2, chunk_size=3, options=ClosedLoopOptions(sensor=Sensor()),
        )
        for name in ("Gsub", "CGM", "insulin", "tir_70_180", "lbgi", "status"):
            out[f"glucose/{name}"] = g[name].values.tolist()
        # 64 sampled adults in one batch, 32 per device: the metrics' sums over time were
        # reduced in another order for the smaller batch (a probe: 12-56 of 200 patients one
        # ulp apart); they are accumulated in time order now
        from cohort.models.glucose import sample_patients

        g = run(
            sample_patients("adult", 64, seed=2), "random", "basal-bolus", days=0.25, seed=2,
            options=ClosedLoopOptions(sensor=Sensor()),
        )
        for name in ("mean", "cv", "tir_70_180", "hbgi"):
            out[f"glucose64/{name}"] = g[name].values.tolist()
        return out

    json.dump({"devices": n_dev, "results": cases()}, sys.stdout)
    """
)


def _run(n_devices: int, cases: str) -> dict:
    # the device count is the script's to choose, not an inherited environment's
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n_devices), cases],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("cases", ["quick", pytest.param("full", marks=pytest.mark.slow)])
def test_two_devices_same_results_as_one(cases):
    one, two = _run(1, cases), _run(2, cases)
    assert one["devices"] == 1 and two["devices"] == 2
    assert one["results"].keys() == two["results"].keys()
    for key, ref in one["results"].items():
        got, ref = np.asarray(two["results"][key]), np.asarray(ref)
        if "diffrax" in key:
            # vmapped adaptive solves: XLA vectorises a batch of 6 per device differently from
            # one of 11 (remainder loops), which moves a few values by one ulp
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-15, err_msg=key)
        else:  # fixed-step and exact engines: bit-identical
            np.testing.assert_array_equal(got, ref, key)
    assert max(max(row) for row in one["results"]["pk2_oral/closed_form/float64"]) > 1.0
    assert set(two["results"]["tmdd_qss/auto/status"]) == {0}
    assert min(min(row[1:]) for row in two["results"]["tmdd_qss/auto"]) > 0.0


def test_use_cpu_cores_rejects_nonsense():
    with pytest.raises(ValueError, match="n must be >= 1"):
        cohort.use_cpu_cores(0)
