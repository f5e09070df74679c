"""Scaling: streamed throughput and peak memory vs cohort size, and Dask weak scaling.

Two parts, each measured in its own subprocess (``ru_maxrss`` is a per-process high-water
mark, so every size gets an honest peak RSS):

* **size**: the bench_stream cohort (``pk2_oral_idr``, fast path float32 with the model's
  default step, ``conc`` and ``response`` at 289 points over 24 h, one 320 mg oral dose)
  streamed into a zarr store for N = 10^3 ... 10^7 with the defaults a user gets (default
  chunk size and codec), timed end to end after a warm-up (compile) on one chunk; peak RSS,
  store size. The baseline is the in-memory rate at 10^6 (``out=None``, same defaults) in a
  fresh process: its first run (what one call costs a user: the 2.3 GB of result arrays are
  fresh memory the OS faults in) and its best of 3 (memory already held by the allocator);
  the report gives streamed / in-memory for both.
* **workers**: weak scaling on a ``dask.distributed.LocalCluster`` (one single-threaded
  worker process per core, one XLA device each), float64, only ``response`` at hourly points
  (writes are negligible), every worker and the client warmed up first (compile, and the
  store path's imports), best of 3 runs. Two workloads: the fast path, 200,000 patients per
  worker (cache-sized batches: bound by the cores' shared cache and memory bandwidth), and the
  adaptive engine (``method="auto"``, this model's default: compute-bound), 50,000 per
  worker. Throughput with W workers vs 1 worker; the same cohort in one local process (all
  cores as JAX devices) and the workers' patients solved in memory by every worker at once
  (the machine's ceiling for independent processes) are reported beside it.

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
    dir_size,
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
INMEM_N = 1_000_000
# Weak-scaling workloads, (method, fraction of --n-per-worker): the fast path streams every
# state through the cache once per step, so two processes share the last-level cache and memory
# bandwidth (on the 2-core VM two independent in-memory processes ran at 1.0-1.4x one); the
# adaptive engine does far more arithmetic per byte (compute-bound: 1.8x). Its patients cost
# ~6x more, hence a quarter of the patients per worker.
WORKLOADS = (("fast", 1), ("auto", 4))
GIB = 2**30


def _cohort_run(pop, dtype, out=None, outputs=OUTPUTS, step=SAVE_STEP_H, method="fast", **kw):
    import cohort

    return cohort.simulate(
        cohort.models.get(MODEL),
        pop,
        cohort.Regimen(amt=DOSE_MG, cmt="depot"),
        cohort.grid(0.0, T_END_H, step),
        method=method,
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
        "store_bytes": dir_size(store)[0],
        "status_not_ok": int(np.count_nonzero(status)),
        "complete": "incomplete" not in ds.attrs,
        "other_cpu_load": load.value,
    }
    shutil.rmtree(store, ignore_errors=True)
    return res


def role_inmem(args) -> dict:
    """In-memory runs of N patients in a fresh process: the first (its result arrays are
    fresh memory the OS faults in, as for a user's one call) and the best of 3 (memory the
    allocator already holds)."""
    import cohort

    pop = population(cohort.models.get(MODEL), args.n, args.seed)
    _cohort_run(subset(pop, 16_384), "float32")  # compile (the default chunk's batch shape)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        ds = _cohort_run(pop, "float32")
        runs.append(time.perf_counter() - t0)
        del ds
    return {
        "n": args.n,
        "first_s": runs[0],
        "first_patients_per_s": args.n / runs[0],
        "best_s": min(runs),
        "best_patients_per_s": args.n / min(runs),
        "seconds_runs": runs,
    }


def _warm(n: int, seed: int, chunk_size: int | None, method: str = "fast") -> float:
    """Compile the compute-bound run's batch solve in this (worker) process; the seconds the
    in-memory run of ``n`` patients took (the machine's own ceiling when every worker runs
    it at once, without Dask scheduling or store writes)."""
    import cohort

    pop = population(cohort.models.get(MODEL), n, seed)
    t0 = time.perf_counter()
    _cohort_run(pop, "float64", outputs=("response",), step=1.0, chunk_size=chunk_size,
                method=method)  # fmt: skip
    return time.perf_counter() - t0


def _warm_store(n: int, seed: int, chunk_size: int | None, method: str) -> float:
    """:func:`_warm`, and then the same patients streamed into a scratch store in this
    process: a task's first run would otherwise import the store code (zarr, codecs) inside
    the timed run."""
    seconds = _warm(n, seed, chunk_size, method)
    import cohort

    pop = population(cohort.models.get(MODEL), n, seed)
    with tempfile.TemporaryDirectory() as tmp:
        _cohort_run(pop, "float64", out=f"{tmp}/warm.zarr", outputs=("response",), step=1.0,
                    chunk_size=chunk_size, method=method)  # fmt: skip
    return seconds


def _timed_runs(run, store: Path, repeat: int = 3) -> list[float]:
    """Seconds of ``repeat`` runs into a fresh ``store`` each (the best is reported: a few
    seconds of work on a shared 2-core VM varied by 30 % from run to run)."""
    seconds = []
    for _ in range(repeat):
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - t0)
    return seconds


def role_workers(args) -> dict:
    import cohort

    n = args.n_per_worker * max(1, args.workers)
    pop = population(cohort.models.get(MODEL), n, args.seed)
    store = Path(args.store)
    chunk = args.chunk or None  # 0: the default
    method = args.method
    run = dict(outputs=("response",), step=1.0, chunk_size=chunk, method=method)
    res = {"workers": args.workers, "n": n, "method": method, "chunk_size": chunk or "default"}
    warm_n = min(args.n_per_worker, chunk or 16_384)  # a whole default batch
    if args.workers == 0:  # one local process, every core a JAX device
        _warm(warm_n, args.seed, chunk, method)
        runs = _timed_runs(lambda: _cohort_run(pop, "float64", out=str(store), **run), store)
        return {**res, "seconds": min(runs), "seconds_runs": runs, "patients_per_s": n / min(runs)}
    from dask.distributed import Client, LocalCluster

    # One core per worker: one XLA device, no intra-op thread pool (else a lone worker
    # already spreads over every core and the comparison measures nothing).
    env = {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1 "
        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "OMP_NUM_THREADS": "1",
    }
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            env=env,
        ) as cluster,  # fmt: skip
        Client(cluster) as client,
    ):
        warm = client.run(_warm_store, warm_n, args.seed, chunk, method)
        # the client's side of a run (store layout, task submission) warmed up too
        _cohort_run(subset(pop, warm_n), "float64", out=str(store), cluster=client, **run)
        shutil.rmtree(store)
        runs = _timed_runs(
            lambda: _cohort_run(pop, "float64", out=str(store), cluster=client, **run), store
        )
        seconds = min(runs)
        # The same patients per worker solved in memory by every worker at once: what the
        # cores deliver to independent processes (shared caches and memory bandwidth).
        alone = client.run(_warm, args.n_per_worker, args.seed, chunk, method)
    ceiling = n / max(alone.values())
    return {**res, "seconds": seconds, "seconds_runs": runs, "patients_per_s": n / seconds,
            "warmup_s": max(warm.values()), "processes_in_memory_patients_per_s": ceiling,
            "fraction_of_processes_ceiling": n / seconds / ceiling}  # fmt: skip


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
    a.axhline(payload["inmem"]["first_patients_per_s"], color="k", ls="--",
              label="in memory, 10^6, first run")  # fmt: skip
    a.axhline(payload["inmem"]["best_patients_per_s"], color="grey", ls=":",
              label="in memory, 10^6, best of 3")  # fmt: skip
    a.set_xscale("log")
    a.set_xlabel("patients N")
    a.set_ylabel("patients / s")
    a.set_title("PK/PD cohort, 24 h, 289 points, float32")
    ax2 = a.twinx()
    ax2.plot(n, [r["peak_rss_bytes"] / GIB for r in sizes], "s:", color="tab:red")
    ax2.set_ylabel("peak RSS (GiB)", color="tab:red")
    a.legend(loc="lower right")
    rows = payload["workers"]
    labels = [("1 process" if r["workers"] == 0 else f"{r['workers']} worker(s)")
              + f"\n{r['method']}" for r in rows]  # fmt: skip
    colors = ["tab:blue" if r["method"] == "fast" else "tab:orange" for r in rows]
    bars = b.bar(range(len(rows)), [r["patients_per_s"] for r in rows], color=colors)
    b.bar_label(bars, [f"{r['speedup_vs_one_worker']:.2f}x" for r in rows], fontsize=7)
    b.set_xticks(range(len(rows)), labels, fontsize=7)
    b.set_ylabel("patients / s")
    per = payload["config"]["n_per_worker"]
    b.set_title("weak scaling (x one worker)\npatients per worker: "
                + ", ".join(f"{m} {k:,}" for m, k in per.items()), fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-n", type=int, default=None, help="largest N (default 10^7)")
    ap.add_argument("--n-per-worker", type=int, default=None, help="weak scaling (200,000)")
    ap.add_argument("--max-workers", type=int, default=None, help="default: CPU cores")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="sizes,workers", help="sizes, workers or both")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--tmpdir", default=None, help="where the temporary stores go")
    ap.add_argument("--role", choices=["stream", "inmem", "workers"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--method", default="fast", help=argparse.SUPPRESS)
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
        args.n = min(INMEM_N, max_n)
        inmem = run_child("inmem", args)
        print(f"  in memory, N={args.n:,}: first run {inmem['first_patients_per_s']:,.0f}, "
              f"best of 3 {inmem['best_patients_per_s']:,.0f} patients/s")  # fmt: skip
        sizes = []
        n = 1_000 if "sizes" in args.parts else max_n + 1
        while n <= max_n:
            args.n = n
            r = run_child("stream", args)
            r["fraction_of_inmem_first"] = r["patients_per_s"] / inmem["first_patients_per_s"]
            r["fraction_of_inmem_best"] = r["patients_per_s"] / inmem["best_patients_per_s"]
            sizes.append(r)
            print(f"  N={n:>10,}: {r['seconds']:7.2f} s, {r['patients_per_s']:>9,.0f} "
                  f"patients/s ({r['fraction_of_inmem_first']:.0%} of in-memory first run, "
                  f"{r['fraction_of_inmem_best']:.0%} of best), peak RSS "
                  f"{r['peak_rss_bytes'] / GIB:.2f} GiB")  # fmt: skip
            n *= 10
        workers = []
        for method, share in WORKLOADS if "workers" in args.parts else ():
            for w in [0, *range(1, max_workers + 1)]:
                args.n = 0
                r = run_child("workers", args, workers=w, n_per_worker=per_worker // share,
                              chunk=0, method=method)  # fmt: skip
                workers.append(r)
                ceiling = r.get("processes_in_memory_patients_per_s")
                note = f" (the same {w} processes in memory: {ceiling:,.0f}/s)" if w else ""
                rate = f"{r['patients_per_s']:,.0f} patients/s{note}"
                print(f"  {method}, workers={w}: {r['n']:,} patients in "
                      f"{r['seconds']:.2f} s = {rate}")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in workers:
        one = next(o for o in workers if o["workers"] == 1 and o["method"] == r["method"])
        r["speedup_vs_one_worker"] = r["patients_per_s"] / one["patients_per_s"]
    if not sizes or not workers:  # a partial run: print, do not replace the results
        print(json.dumps({"inmem": inmem, "sizes": sizes, "workers": workers}, default=str))
        return None
    largest = sizes[-1]
    two = {m: next((r for r in workers if r["workers"] == 2 and r["method"] == m), None)
           for m, _ in WORKLOADS}  # fmt: skip
    payload = {
        "benchmark": "bench_scale",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "model": MODEL,
            "dosing": f"single oral dose {DOSE_MG:g} mg into depot at t=0",
            "size_part": "fast path float32, default step and chunk size, conc+response at "
            "289 points over 24 h, default codec",
            "worker_part": "default chunk size, float64, response at 25 hourly points, one "
            "single-threaded worker process per core with one XLA device each; two workloads: "
            "the fast path (cache-sized batches: bound by the cores' shared cache and memory "
            "bandwidth) and the adaptive engine (method='auto', the default for this "
            "nonlinear model: compute-bound)",
            "n_per_worker": {m: per_worker // share for m, share in WORKLOADS},
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
            "largest_fraction_of_inmem_first": largest["fraction_of_inmem_first"],
            "largest_fraction_of_inmem_best": largest["fraction_of_inmem_best"],
            **{
                f"two_workers_speedup_{m}": None if r is None else r["speedup_vs_one_worker"]
                for m, r in two.items()
            },  # fmt: skip
        },
        "targets": {
            "peak RSS < 4 GiB at the largest N": largest["peak_rss_bytes"] < TARGET_RSS_BYTES,
            "streamed >= 80 % of in-memory (first run) at the largest N": largest[
                "fraction_of_inmem_first"
            ]
            >= TARGET_STREAM_FRACTION,
            "streamed >= 80 % of in-memory (best of 3) at the largest N": largest[
                "fraction_of_inmem_best"
            ]
            >= TARGET_STREAM_FRACTION,
            **{
                f"2 workers >= 1.6x one worker ({m})": None
                if r is None
                else r["speedup_vs_one_worker"] >= TARGET_WEAK_SCALING
                for m, r in two.items()
            },  # fmt: skip
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
