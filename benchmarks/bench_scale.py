"""Scaling: streamed throughput and peak memory vs cohort size, and Dask weak scaling.

Two parts, each measured in its own subprocess (``ru_maxrss`` is a per-process high-water
mark, so every size gets an honest peak RSS):

* **size**: the bench_stream cohort (``pk2_oral_idr``, fast path float32 with the model's
  default step, ``conc`` and ``response`` at 289 points over 24 h, one 320 mg oral dose)
  streamed into a zarr store for N = 10^3 ... 10^7 with the defaults a user gets (default
  chunk size and codec), timed end to end after a warm-up (compile) on one chunk; peak RSS,
  store size. The in-memory rate (``out=None``, best of 3 on 200,000 patients, same chunk
  size) is the baseline: the report gives streamed / in-memory per N.
* **workers**: weak scaling of a compute-bound run on a ``dask.distributed.LocalCluster``
  (one single-threaded worker process per core, one XLA device each): 200,000 patients per
  worker, float64, only ``response`` at hourly points (writes are negligible), every worker
  warmed up first. Throughput with W workers vs 1 worker; the same cohort in one local process
  (all cores as JAX devices) is reported beside it.

Writes ``results/bench_scale.json`` and ``results/bench_scale.png``.

    python benchmarks/bench_scale.py                 # sizes up to 10^7 (~4 min, 16 GB of disk)
    python benchmarks/bench_scale.py --max-n 1000000 # up to 10^6
    python benchmarks/bench_scale.py --quick         # up to 10^5, 50,000 per worker
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    DOSE_MG,
    MODEL,
    RESULTS_DIR,
    SAVE_STEP_H,
    SEED,
    T_END_H,
    OtherLoad,
    machine_info,
    peak_rss_bytes,
    population,
    subset,
    write_json,
)

OUTPUTS = ("conc", "response")
TARGET_RSS_BYTES = 4 * 2**30
TARGET_STREAM_FRACTION = 0.8
TARGET_WEAK_SCALING = 1.6
INMEM_N = 200_000
GIB = 2**30


def _dir_size(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def _cohort_run(pop, dtype, out=None, outputs=OUTPUTS, step=SAVE_STEP_H, **kw):
    import cohort

    return cohort.simulate(
        cohort.models.get(MODEL),
        pop,
        cohort.Regimen(amt=DOSE_MG, cmt="depot"),
        cohort.grid(0.0, T_END_H, step),
        method="fast",
        dtype=dtype,
        outputs=list(outputs),
        out=out,
        **kw,
    )


# --------------------------------------------------------------------------------------------
# Child roles (each prints one JSON line)
# --------------------------------------------------------------------------------------------


def role_stream(args) -> dict:
    import cohort

    pop = population(cohort.models.get(MODEL), args.n, args.seed)
    rss_setup = peak_rss_bytes()
    store = Path(args.store)
    t0 = time.perf_counter()
    first = subset(pop, min(args.n, 16_384))
    _cohort_run(first, "float32", out=str(store.with_name("warmup.zarr")))
    warmup = time.perf_counter() - t0
    shutil.rmtree(store.with_name("warmup.zarr"), ignore_errors=True)
    with OtherLoad() as load:
        t0 = time.perf_counter()
        ds = _cohort_run(pop, "float32", out=str(store))
        seconds = time.perf_counter() - t0
    status = np.asarray(ds["status"].values)
    res = {
        "n": args.n,
        "seconds": seconds,
        "patients_per_s": args.n / seconds,
        "warmup_s": warmup,
        "chunk_size": int(ds.attrs["chunk_size"]),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_setup_bytes": rss_setup,
        "store_bytes": _dir_size(store),
        "status_not_ok": int(np.count_nonzero(status)),
        "complete": "incomplete" not in ds.attrs,
        "other_cpu_load": load.value,
    }
    shutil.rmtree(store, ignore_errors=True)
    return res


def role_inmem(args) -> dict:
    import cohort

    pop = population(cohort.models.get(MODEL), args.n, args.seed)
    _cohort_run(subset(pop, 16_384), "float32")  # compile (the default chunk's batch shape)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        ds = _cohort_run(pop, "float32")
        runs.append(time.perf_counter() - t0)
    return {
        "n": args.n,
        "seconds": min(runs),
        "seconds_runs": runs,
        "patients_per_s": args.n / min(runs),
        "chunk_size": int(ds.attrs["chunk_size"]),
    }


def _warm(n: int, seed: int) -> float:
    """Compile the compute-bound run's batch solve in this (worker) process."""
    import cohort

    t0 = time.perf_counter()
    _cohort_run(population(cohort.models.get(MODEL), n, seed), "float64",
                outputs=("response",), step=1.0)  # fmt: skip
    return time.perf_counter() - t0


def role_workers(args) -> dict:
    import cohort

    n = args.n_per_worker * max(1, args.workers)
    pop = population(cohort.models.get(MODEL), n, args.seed)
    store = Path(args.store)
    if args.workers == 0:  # one local process, every core a JAX device
        _warm(16_384, args.seed)
        t0 = time.perf_counter()
        _cohort_run(pop, "float64", out=str(store), outputs=("response",), step=1.0)
        seconds = time.perf_counter() - t0
        return {"workers": 0, "n": n, "seconds": seconds, "patients_per_s": n / seconds}
    from dask.distributed import Client, LocalCluster

    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env=env,
        ) as cluster,  # fmt: skip
        Client(cluster) as client,
    ):
        warm = client.run(_warm, 16_384, args.seed)
        t0 = time.perf_counter()
        _cohort_run(pop, "float64", out=str(store), outputs=("response",), step=1.0,
                    cluster=client)  # fmt: skip
        seconds = time.perf_counter() - t0
    return {
        "workers": args.workers,
        "n": n,
        "seconds": seconds,
        "patients_per_s": n / seconds,
        "warmup_s": max(warm.values()),
    }


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------


def run_child(role: str, args, **extra) -> dict:
    opts = {"n": args.n, "seed": args.seed, "store": args.store, **extra}
    cmd = [sys.executable, __file__, "--role", role]
    for k, v in opts.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    print(f"[{role}] {' '.join(cmd[3:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"{role} subprocess failed (exit {proc.returncode})")
    res = json.loads([s for s in proc.stdout.splitlines() if s.startswith("{")][-1])
    res["process_wall_s"] = time.perf_counter() - t0
    shutil.rmtree(args.store, ignore_errors=True)
    return res


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = payload["sizes"]
    n = [r["n"] for r in sizes]
    a.plot(n, [r["patients_per_s"] for r in sizes], "o-", label="streamed to zarr")
    a.axhline(payload["inmem"]["patients_per_s"], color="k", ls="--", label="in memory")
    a.set_xscale("log")
    a.set_xlabel("patients N")
    a.set_ylabel("patients / s")
    a.set_title("PK/PD cohort, 24 h, 289 points, float32")
    ax2 = a.twinx()
    ax2.plot(n, [r["peak_rss_bytes"] / GIB for r in sizes], "s:", color="tab:red")
    ax2.set_ylabel("peak RSS (GiB)", color="tab:red")
    a.legend(loc="lower right")
    rows = payload["workers"]
    labels = ["1 process\n(all cores)" if r["workers"] == 0 else f"{r['workers']} Dask\nworker(s)"
              for r in rows]  # fmt: skip
    b.bar(labels, [r["patients_per_s"] for r in rows], color="tab:blue")
    b.set_ylabel("patients / s")
    b.set_title(f"weak scaling, {payload['config']['n_per_worker']:,} patients per worker")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-n", type=int, default=None, help="largest N (default 10^7)")
    ap.add_argument("--n-per-worker", type=int, default=None, help="weak scaling (200,000)")
    ap.add_argument("--max-workers", type=int, default=None, help="default: CPU cores")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--tmpdir", default=None, help="where the temporary stores go")
    ap.add_argument("--role", choices=["stream", "inmem", "workers"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role:
        import cohort  # enables x64 before anything else touches jax

        if args.role != "workers" or args.workers == 0:
            cohort.use_cpu_cores()  # as the CLI does: one JAX CPU device per core
        fn = {"stream": role_stream, "inmem": role_inmem, "workers": role_workers}[args.role]
        print(json.dumps(fn(args)))
        return None

    max_n = args.max_n or (100_000 if args.quick else 10_000_000)
    per_worker = args.n_per_worker or (50_000 if args.quick else 200_000)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    max_workers = args.max_workers or cores or 1
    tmp = Path(tempfile.mkdtemp(prefix="cohort_bench_scale_", dir=args.tmpdir))
    args.store = tmp / "cohort.zarr"
    info = machine_info()
    print(f"bench_scale: up to N={max_n:,}; backend {info['jax_backend']}, {cores} cores")
    try:
        args.n = INMEM_N
        inmem = run_child("inmem", args)
        print(f"  in memory: {inmem['patients_per_s']:,.0f} patients/s")
        sizes = []
        n = 1_000
        while n <= max_n:
            args.n = n
            r = run_child("stream", args)
            r["fraction_of_inmem"] = r["patients_per_s"] / inmem["patients_per_s"]
            sizes.append(r)
            print(f"  N={n:>10,}: {r['seconds']:7.2f} s, {r['patients_per_s']:>9,.0f} "
                  f"patients/s ({r['fraction_of_inmem']:.0%} of in-memory), peak RSS "
                  f"{r['peak_rss_bytes'] / GIB:.2f} GiB")  # fmt: skip
            n *= 10
        workers = []
        for w in [0, *range(1, max_workers + 1)]:
            args.n = 0
            r = run_child("workers", args, workers=w, n_per_worker=per_worker)
            workers.append(r)
            print(f"  workers={w}: {r['n']:,} patients in {r['seconds']:.2f} s = "
                  f"{r['patients_per_s']:,.0f} patients/s")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    one = next(r for r in workers if r["workers"] == 1)
    for r in workers:
        r["speedup_vs_one_worker"] = r["patients_per_s"] / one["patients_per_s"]
    largest = sizes[-1]
    two = next((r for r in workers if r["workers"] == 2), None)
    payload = {
        "benchmark": "bench_scale",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "model": MODEL,
            "dosing": f"single oral dose {DOSE_MG:g} mg into depot at t=0",
            "size_part": "fast path float32, default step and chunk size, conc+response at "
            "289 points over 24 h, default codec",
            "worker_part": "fast path float64, response at 25 hourly points, one single-"
            "threaded worker process per core with one XLA device each",
            "n_per_worker": per_worker,
            "inmem_n": INMEM_N,
            "quick": args.quick,
        },
        "machine": info,
        "inmem": inmem,
        "sizes": sizes,
        "workers": workers,
        "summary": {
            "largest_n": largest["n"],
            "largest_peak_rss_gib": largest["peak_rss_bytes"] / GIB,
            "largest_fraction_of_inmem": largest["fraction_of_inmem"],
            "two_workers_speedup": None if two is None else two["speedup_vs_one_worker"],
        },
        "targets": {
            "peak RSS < 4 GiB at the largest N": largest["peak_rss_bytes"] < TARGET_RSS_BYTES,
            "streamed >= 80 % of in-memory at the largest N": largest["fraction_of_inmem"]
            >= TARGET_STREAM_FRACTION,
            "2 workers >= 1.6x one worker": None
            if two is None
            else two["speedup_vs_one_worker"] >= TARGET_WEAK_SCALING,
        },
    }
    name = "bench_scale_quick" if args.quick else "bench_scale"
    write_json(RESULTS_DIR / f"{name}.json", payload)
    plot(payload, RESULTS_DIR / f"{name}.png")
    for k, v in payload["targets"].items():
        print(f"  target {k}: {'met' if v else 'NOT met' if v is not None else 'n/a'}")
    return payload


if __name__ == "__main__":
    main()
