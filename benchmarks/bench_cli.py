"""Time to first result (issue 16): what a user waits for at the command line, wall clock of
whole processes, as typed.

Rows: ``cohort --help``; ``python -c "import cohort"``; ``cohort simulate`` of 100 patients
(pk2_oral_idr, 14 doses, one week; targets: first < 4 s, repeated < 1.5 s) and
``cohort glucose --n 10000 --days 1`` (target: cold < 8 s; the repeated run's throughput
within 1.5x of a warm ``cohort.glucose.run`` in one process). "first" runs with an empty
cache folder, "repeated" with the one the first run filled. Baseline in the same process:
the same commands with the cache turned off (``COHORT_NO_COMPILE_CACHE=1``), i.e. what every
run cost before the cache.

    python benchmarks/bench_cli.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, write_json  # noqa: E402

SIMULATE = ["simulate", "--model", "pk2_oral_idr", "--n", "100", "--amt", "320", "--ii", "12",
            "--addl", "13", "--t-end", "168", "--overwrite"]  # fmt: skip
GLUCOSE = ["glucose", "--n", "10000", "--days", "1"]


def timed(argv: list[str], env: dict, cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{proc.stderr[-2000:]}")
    return wall, proc.stdout + proc.stderr


def cohort_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cohort.cli import main; main()", *args]


def warm_glucose_run() -> float:
    """Patient-days/s of a warm ``cohort.glucose.run`` on the CLI's cohort (best of 2)."""
    code = (
        "import time, cohort.devices as d; d.use_cpu_cores()\n"
        "from cohort.glucose.patients import sample_plausible\n"
        "from cohort.glucose.loop import ClosedLoopOptions\n"
        "from cohort.glucose.sensor import Sensor\n"
        "from cohort.glucose import run\n"
        "pop = sample_plausible('adult', 10000, seed=0)\n"
        "o = ClosedLoopOptions(period=5.0, sensor=Sensor(), pump_increment=0.05)\n"
        "best = 1e9\n"
        "for _ in range(3):\n"
        "    t = time.perf_counter()\n"
        "    run(pop, 'random', 'basal-bolus', days=1, seed=0, options=o)\n"
        "    best = min(best, time.perf_counter() - t)\n"
        "print(10000 / best)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "COHORT_CACHE_DIR": str(tmp / "cache"), "COHORT_NO_COMPILE_CACHE": ""}
        off = {**env, "COHORT_NO_COMPILE_CACHE": "1"}
        for what, argv in (("cohort --help", cohort_cmd("--help")),
                           ("import cohort", [sys.executable, "-c", "import cohort"])):  # fmt: skip
            wall = min(timed(argv, env, tmp)[0] for _ in range(3))
            rows.append({"what": what, "seconds": round(wall, 3)})
            print(f"{what}: {wall:.2f} s")
        for name, args in (("simulate 100 patients", [*SIMULATE, "-o", "s.zarr"]),
                           ("glucose 10,000 patient-days", GLUCOSE)):  # fmt: skip
            first, _ = timed(cohort_cmd(*args), env, tmp)
            repeated, text = timed(cohort_cmd(*args), env, tmp)
            uncached, _ = timed(cohort_cmd(*args), off, tmp)
            row = {"what": name, "first_s": round(first, 2), "repeated_s": round(repeated, 2),
                   "uncached_s": round(uncached, 2),
                   "ratio_uncached_over_repeated": round(uncached / repeated, 2)}  # fmt: skip
            m = re.search(r"\(([\d,]+) patient-days/s\)", text)
            if m:
                row["repeated_patient_days_per_s"] = float(m.group(1).replace(",", ""))
            rows.append(row)
            print(row)
        warm = warm_glucose_run()
        rows.append({"what": "glucose.run warm (same cohort)", "patient_days_per_s": round(warm)})
        print(f"warm glucose.run: {warm:,.0f} patient-days/s")
    write_json(RESULTS_DIR / "bench_cli.json", {"machine": machine_info(), "rows": rows})


if __name__ == "__main__":
    main()
