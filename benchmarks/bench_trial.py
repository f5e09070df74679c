"""In-silico trial throughput: 1,000 replicate trials x 200 patients (theophylline dose ranging).

``experiments/theophylline_dose_ranging.toml``: 4 arms (placebo, 200/300/400 mg q12h), pk1_oral
closed form, 13 sampling times + a 0.5 h grid (49 simulation times), assay error, LLOQ,
dropout, stratified block randomization, 4 endpoints, responder + ANCOVA analyses, PTA.
All 200,000 patients are one ``simulate`` call. Timed end to end: enrolment, randomization,
simulation, endpoints (``run``) and statistics (``analyze``), in memory and streamed to zarr.
Target: < 60 s on 2 CPU cores.

    python benchmarks/bench_trial.py            # 1,000 x 200
    python benchmarks/bench_trial.py --quick    # 100 x 200
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, OtherLoad, machine_info, peak_rss_bytes, write_json  # noqa: E402

SPEC = Path(__file__).resolve().parents[1] / "experiments" / "theophylline_dose_ranging.toml"
TARGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 replicates instead of 1,000")
    args = ap.parse_args()
    import cohort.trial as trial

    reps = 100 if args.quick else 1000
    # Warm-up: compile the closed-form solver for this batch shape on a small trial.
    t0 = time.perf_counter()
    trial.analyze(trial.run(SPEC, replicates=2))
    warm = time.perf_counter() - t0
    timings = {}
    with OtherLoad() as load_mem:
        t0 = time.perf_counter()
        res = trial.run(SPEC, replicates=reps)
        timings["run_in_memory_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        ana = trial.analyze(res)
        timings["analyze_s"] = time.perf_counter() - t1
        timings["total_in_memory_s"] = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="bench_trial_"))
    try:
        with OtherLoad() as load_zarr:
            t0 = time.perf_counter()
            res_z = trial.run(SPEC, replicates=reps, out=tmp / "trial.zarr")
            trial.analyze(res_z)
            timings["total_zarr_s"] = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in (tmp / "trial.zarr").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_pat = reps * res.spec.n
    payload = {
        "benchmark": "bench_trial",
        "spec": str(SPEC.relative_to(SPEC.parents[1])),
        "replicates": reps,
        "patients_per_trial": res.spec.n,
        "patients_total": n_pat,
        "simulation_times": int(res.simulation.sizes["time"]),
        "warmup_compile_s": warm,
        **timings,
        "target_s": TARGET_S,
        "meets_target": timings["total_in_memory_s"] < TARGET_S
        and timings["total_zarr_s"] < TARGET_S,
        "store_bytes": size,
        "peak_rss_bytes": peak_rss_bytes(),
        "other_load_cores": {"in_memory": load_mem.value, "zarr": load_zarr.value},
        "power": ana.summary[["comparison", "power", "power_mc_low", "power_mc_high"]].to_dict(
            "records"
        ),
        "machine": machine_info(),
    }
    name = "bench_trial_quick.json" if args.quick else "bench_trial.json"
    write_json(RESULTS_DIR / name, payload)
    sys.stdout.write(
        f"{reps} x {res.spec.n} trial: run {timings['run_in_memory_s']:.1f} s + analyze "
        f"{timings['analyze_s']:.1f} s = {timings['total_in_memory_s']:.1f} s in memory; "
        f"{timings['total_zarr_s']:.1f} s with zarr (target < {TARGET_S:.0f} s)\n"
    )


if __name__ == "__main__":
    main()
