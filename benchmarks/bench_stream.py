"""Streaming a large cohort to zarr: end-to-end throughput and peak memory.

N = 1,000,000 patients of ``pk2_oral_idr`` (the bench_pkpd cohort: same seed, same IIV, one
320 mg oral dose), fast path float32 (RK4, dt = 1/12 h), outputs ``conc`` and ``response`` at
289 points, written chunk by chunk into a zarr store in a temporary directory.

Each part runs in its own subprocess, so the peak RSS of the streaming run is not inflated by
the in-memory comparison (``ru_maxrss`` is a per-process high-water mark):

* ``stream``: warm-up (compile) on one chunk into a throwaway store, then
  ``simulate(..., out=store)`` for all N, timed end to end (solve + write); peak RSS; store
  size on disk; per-chunk completion times.
* ``inmem``: warm-up, then ``simulate(..., out=None)`` on the first ``--inmem-n`` patients
  (same chunk size, so the same compiled solver and batches), best of 3 -> in-memory
  throughput; checks that the store holds the same values; times writing those arrays with
  zarr alone.

Targets: peak RSS < 4 GiB; end-to-end throughput >= 50 % of in-memory throughput.

    python benchmarks/bench_stream.py            # N = 1,000,000 (~1-3 min on 2 CPU cores)
    python benchmarks/bench_stream.py --quick    # N = 200,000, chunk 50,000
"""

from __future__ import annotations

import argparse
import datetime
import json
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
    short_error,
    subset,
    write_json,
)

OUTPUTS = ("conc", "response")
TARGET_RSS_BYTES = 4 * 2**30
TARGET_THROUGHPUT_FRACTION = 0.5
INMEM_REPEAT = 3
GIB = 2**30
DISTURBED = 0.25  # other processes' CPU load (cores) above which a timing counts as disturbed


def _simulate(pop, args, dtype, n=None, out=None, progress=None):
    import cohort

    model = cohort.models.get(MODEL)
    times = cohort.grid(0.0, T_END_H, SAVE_STEP_H)
    return cohort.simulate(
        model,
        pop if n is None else subset(pop, n),
        cohort.Regimen(amt=DOSE_MG, cmt="depot"),
        times,
        method="fast",
        dtype=dtype,
        chunk_size=args.chunk_size,
        out=out,
        options=cohort.FastOptions(dt=1.0 / 12.0),
        outputs=list(OUTPUTS),
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# Child roles
# --------------------------------------------------------------------------------------------


def role_stream(args) -> dict:
    import cohort

    model = cohort.models.get(MODEL)
    pop = population(model, args.n, args.seed)
    rss_setup = peak_rss_bytes()
    res: dict = {"dtype_requested": args.dtype}
    store = Path(args.store)
    warm_store = store.with_name("warmup.zarr")
    dtype = args.dtype
    t0 = time.perf_counter()
    try:
        _simulate(pop, args, dtype, n=args.chunk_size, out=str(warm_store))
    except Exception as exc:  # noqa: BLE001 - float32 may be unsupported by this cohort build
        if dtype != "float32":
            raise
        res["fallback_reason"] = short_error(exc)
        dtype = "float64"
        shutil.rmtree(warm_store, ignore_errors=True)
        _simulate(pop, args, dtype, n=args.chunk_size, out=str(warm_store))
    res["warmup_s"] = time.perf_counter() - t0
    res["dtype"] = dtype
    shutil.rmtree(warm_store, ignore_errors=True)
    rss_before = peak_rss_bytes()

    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()

    def progress(done, total):
        marks.append((time.perf_counter() - t0, int(done)))

    with OtherLoad() as load:
        ds = _simulate(pop, args, dtype, out=str(store), progress=progress)
        seconds = time.perf_counter() - t0
    peak = peak_rss_bytes()
    size, n_files = dir_size(store)
    status = np.asarray(ds["status"].values)
    itemsize = np.dtype(dtype).itemsize
    raw = args.n * ds.sizes["time"] * len(OUTPUTS) * itemsize
    res.update(
        {
            "seconds": seconds,
            "patients_per_s": args.n / seconds,
            "peak_rss_bytes": peak,
            "peak_rss_setup_bytes": rss_setup,
            "peak_rss_after_warmup_bytes": rss_before,
            "store_bytes": size,
            "store_files": n_files,
            "raw_output_bytes": raw,
            "compression_ratio": raw / size if size else None,
            "status_not_ok": int(np.count_nonzero(status)),
            "status_unwritten": int(np.count_nonzero(status < 0)),
            "n_times": int(ds.sizes["time"]),
            "chunk_marks": marks,
            "other_cpu_load": load.value,
            "cpu_s": load.own_cpu_s,
            "incomplete": ds.attrs.get("incomplete"),
        }
    )
    return res


def role_inmem(args) -> dict:
    import zarr

    import cohort

    model = cohort.models.get(MODEL)
    pop = population(model, args.n, args.seed)
    n = min(args.inmem_n, args.n)
    _simulate(pop, args, args.dtype, n=args.chunk_size)  # warm-up / compile
    # Best of INMEM_REPEAT: a sub-second run varies by up to 1.7x on this shared machine, and
    # the fastest in-memory run is the strictest baseline for the streaming ratio.
    runs = []
    for _ in range(INMEM_REPEAT):
        with OtherLoad() as load:
            t0 = time.perf_counter()
            ds = _simulate(pop, args, args.dtype, n=n)
            runs.append((time.perf_counter() - t0, load.value, load.own_cpu_s))
    seconds, other_load, cpu_s = min(runs)
    arrays = {o: ds[o].values for o in OUTPUTS}
    res = {
        "n": n,
        "seconds": seconds,
        "seconds_runs": [r[0] for r in runs],
        "patients_per_s": n / seconds,
        "dtype": args.dtype,
        "other_cpu_load": other_load,
        "cpu_s": cpu_s,
    }

    # The streamed store must hold exactly what the in-memory run computed.
    if args.store and Path(args.store).exists():
        stored = cohort.open_result(args.store)
        res["store_max_abs_diff"] = max(
            float(np.nanmax(np.abs(stored[o][:n].values.astype(float) - arrays[o])))
            for o in OUTPUTS
        )

    # Writing the same arrays with zarr alone (cohort's output codec and chunking).
    try:
        from cohort.store.zarr_store import OUTPUT_CODEC

        codec = OUTPUT_CODEC
    except ImportError:
        codec = "auto"
    tmp = Path(tempfile.mkdtemp(prefix="write_only_", dir=Path(args.store).parent))
    try:
        g = zarr.open_group(str(tmp / "w.zarr"), mode="w", zarr_format=3)
        t0 = time.perf_counter()
        for o, a in arrays.items():
            z = g.create_array(
                o,
                shape=a.shape,
                dtype=a.dtype,
                compressors=codec,
                chunks=(args.chunk_size, a.shape[1]),
            )
            for k in range(0, n, args.chunk_size):
                z[k : k + args.chunk_size] = a[k : k + args.chunk_size]
        res["write_only_s"] = time.perf_counter() - t0
        res["write_only_patients_per_s"] = n / res["write_only_s"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------


def run_child(role: str, args, dtype: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--role",
        role,
        "--n",
        str(args.n),
        "--chunk-size",
        str(args.chunk_size),
        "--inmem-n",
        str(args.inmem_n),
        "--seed",
        str(args.seed),
        "--store",
        str(args.store),
        "--dtype",
        dtype,
    ]
    print(f"[{role}] {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"{role} subprocess failed (exit {proc.returncode})")
    line = [s for s in proc.stdout.splitlines() if s.startswith("{")][-1]
    res = json.loads(line)
    res["process_wall_s"] = wall
    return res


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--n", type=int, default=None, help="cohort size (default 1,000,000; 200,000 with --quick)"
    )
    ap.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="patients per batch/zarr chunk (default 100,000; 50,000 with --quick)",
    )
    ap.add_argument(
        "--inmem-n",
        type=int,
        default=None,
        help="patients in the in-memory comparison (default 2 chunks)",
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--retries",
        type=int,
        default=1,
        help="reruns of a part that other processes disturbed (default 1)",
    )
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--tmpdir", default=None, help="where the temporary store goes")
    ap.add_argument("--keep", action="store_true", help="keep the store (prints its path)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default results/bench_stream.json, or *_quick.json)",
    )
    ap.add_argument("--role", choices=["stream", "inmem"], help=argparse.SUPPRESS)
    ap.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.n is None:
        args.n = 200_000 if args.quick else 1_000_000
    if args.chunk_size is None:
        args.chunk_size = min(args.n, 50_000 if args.quick else 100_000)
    if args.inmem_n is None:
        args.inmem_n = min(args.n, 2 * args.chunk_size)

    if args.role:  # child: print one JSON line
        import cohort  # enables x64 before anything else touches jax

        devices = cohort.use_cpu_cores()  # as the CLI does: one JAX CPU device per core
        fn = role_stream if args.role == "stream" else role_inmem
        print(json.dumps({**fn(args), "jax_devices": devices}))
        return None

    out_path = args.out or RESULTS_DIR / (
        "bench_stream_quick.json" if args.quick else "bench_stream.json"
    )
    tmp = Path(tempfile.mkdtemp(prefix="cohort_bench_stream_", dir=args.tmpdir))
    args.store = tmp / "cohort.zarr"
    info = machine_info()
    print(
        f"bench_stream: N={args.n:,}, chunk {args.chunk_size:,}, {args.dtype}, store "
        f"{args.store}; backend {info['jax_backend']}, {info['cpu_usable']} CPU cores",
        flush=True,
    )
    try:
        stream = run_child("stream", args, args.dtype)
        attempts = [stream]
        for _ in range(args.retries):  # a run disturbed by other processes: try again
            if (stream.get("other_cpu_load") or 0.0) <= DISTURBED:
                break
            print(
                f"  disturbed (other processes used {stream['other_cpu_load']:.2f} cores); "
                "running the streaming part again",
                flush=True,
            )
            shutil.rmtree(args.store, ignore_errors=True)
            attempts.append(run_child("stream", args, args.dtype))
            stream = min(attempts, key=lambda r: r["seconds"])
        stream = {
            **stream,
            "attempts": [
                {k: r[k] for k in ("seconds", "other_cpu_load", "peak_rss_bytes")} for r in attempts
            ],
        }
        inmem = run_child("inmem", args, stream["dtype"])
        for _ in range(args.retries):
            if (inmem.get("other_cpu_load") or 0.0) <= DISTURBED:
                break
            again = run_child("inmem", args, stream["dtype"])
            if again["seconds"] < inmem["seconds"]:
                inmem = again
        if args.keep:
            print(f"store kept at {args.store}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    fraction = stream["patients_per_s"] / inmem["patients_per_s"]
    cpu_us = {  # CPU time per patient (all threads): insensitive to other processes' load
        k: 1e6 * r["cpu_s"] / n if r.get("cpu_s") else None
        for k, r, n in (("stream", stream, args.n), ("inmem", inmem, inmem["n"]))
    }
    acceptance = [
        {
            "target": "peak RSS of the streaming process < 4 GiB",
            "value_gib": stream["peak_rss_bytes"] / GIB,
            "pass": stream["peak_rss_bytes"] < TARGET_RSS_BYTES,
        },
        {
            "target": "end-to-end throughput >= 50 % of in-memory throughput",
            "value": fraction,
            "pass": fraction >= TARGET_THROUGHPUT_FRACTION,
        },
    ]
    if stream.get("fallback_reason"):
        acceptance.append(
            {
                "target": f"ran in the requested dtype {args.dtype}",
                "value": stream["dtype"],
                "pass": False,
            }
        )

    print(
        f"\nstreaming {args.n:,} patients x {stream['n_times']} times x {len(OUTPUTS)} outputs "
        f"({stream['dtype']}"
        + (
            f"; FELL BACK from {args.dtype}: {stream['fallback_reason']}"
            if stream.get("fallback_reason")
            else ""
        )
        + ")"
    )
    print(
        f"  end-to-end (solve + write)   {stream['seconds']:8.2f} s   "
        f"{stream['patients_per_s']:12,.0f} patients/s"
    )
    print(
        f"  in-memory ({inmem['n']:,} patients) {inmem['seconds']:8.2f} s   "
        f"{inmem['patients_per_s']:12,.0f} patients/s"
    )
    print(f"  end-to-end / in-memory       {fraction:8.2%}")
    if cpu_us["stream"] and cpu_us["inmem"]:
        print(
            f"  CPU time per patient         {cpu_us['stream']:8.1f} us streaming, "
            f"{cpu_us['inmem']:.1f} us in memory (ratio {cpu_us['inmem'] / cpu_us['stream']:.2f})"
        )
    if "write_only_s" in inmem:
        print(
            f"  zarr write only ({inmem['n']:,})  {inmem['write_only_s']:8.2f} s   "
            f"{inmem['write_only_patients_per_s']:12,.0f} patients/s"
        )
    print(
        f"  peak RSS                     {stream['peak_rss_bytes'] / GIB:8.2f} GiB "
        f"(after setup {stream['peak_rss_setup_bytes'] / GIB:.2f}, after warm-up "
        f"{stream['peak_rss_after_warmup_bytes'] / GIB:.2f})"
    )
    print(
        f"  store on disk                {stream['store_bytes'] / GIB:8.2f} GiB in "
        f"{stream['store_files']} files (raw {stream['raw_output_bytes'] / GIB:.2f} GiB, "
        f"ratio {stream['compression_ratio']:.2f})"
    )
    loads = [x for x in (stream.get("other_cpu_load"), inmem.get("other_cpu_load")) if x]
    if loads and max(loads) > DISTURBED:
        print(f"  warning: other processes used up to {max(loads):.2f} CPU cores during timings")
    print(
        f"  status != ok: {stream['status_not_ok']}; store vs in-memory max abs diff: "
        f"{inmem.get('store_max_abs_diff')}"
    )
    print("\nAcceptance")
    for a in acceptance:
        val = a.get("value_gib", a.get("value"))
        val = f"{val:.3g}" if isinstance(val, float) else val
        print(f"  [{'PASS' if a['pass'] else 'FAIL'}] {a['target']}: {val}")

    payload = {
        "benchmark": "bench_stream",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "n_patients": args.n,
            "chunk_size": args.chunk_size,
            "dtype_requested": args.dtype,
            "dtype": stream["dtype"],
            "inmem_n": inmem["n"],
            "model": MODEL,
            "method": "fast",
            "fast_dt_h": 1.0 / 12.0,
            "outputs": list(OUTPUTS),
            "n_times": stream["n_times"],
            "seed": args.seed,
            "dosing": f"single oral dose {DOSE_MG:g} mg into depot at t=0",
            "quick": args.quick,
        },
        "machine": info,
        "stream": stream,
        "inmem": inmem,
        "end_to_end_fraction_of_inmem": fraction,
        "cpu_us_per_patient": cpu_us,
        "acceptance": acceptance,
    }
    write_json(out_path, payload)
    print(f"\nwrote {out_path}")
    return payload


if __name__ == "__main__":
    main()
