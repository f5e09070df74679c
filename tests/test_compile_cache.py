"""Time to first result: the CLI imports no JAX for help, and its persistent compilation cache
gives bit-identical results, survives corrupted entries and is keyed per JAX version."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIMULATE = [
    "simulate", "--model", "pk2_oral_idr", "--n", "20", "--amt", "320", "--ii", "12",
    "--addl", "3", "--t-end", "48", "--method", "fast", "--overwrite",
]  # fmt: skip


def _cohort(args, env_extra, tmp_path, returncode=0):
    """Run the ``cohort`` console script's entry point (``cohort.cli:main``) in a process."""
    env = {**os.environ, **env_extra}
    proc = subprocess.run(
        [sys.executable, "-c", "from cohort.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert proc.returncode == returncode, proc.stderr[-2000:]
    return proc


def _conc(path: Path) -> np.ndarray:
    from cohort.store import open_result

    return open_result(path).conc.values


def test_help_and_import_do_not_load_jax():
    """`cohort --help` stays under 0.5 s: no JAX, solver, table or array-store library."""
    heavy = ("jax", "diffrax", "pandas", "xarray", "zarr", "numpyro", "matplotlib")
    code = (
        "import sys, cohort, cohort.cli\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(cohort.cli.app, ['--help'])\n"
        f"print(r.exit_code, *[m in sys.modules for m in {heavy!r}])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["0"] + ["False"] * len(heavy), out.stdout + out.stderr


def test_console_script_keeps_exit_codes_and_output(tmp_path):
    """``main`` ends the process with ``os._exit`` after the command: its exit code and its
    whole output must still come through, and the installed script must be ``main``."""
    import tomllib

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    scripts = tomllib.loads(pyproject)["project"]["scripts"]
    assert scripts["cohort"] == "cohort.cli:main"
    off = {"COHORT_NO_COMPILE_CACHE": "1"}
    listing = _cohort(["models"], off, tmp_path).stdout
    assert "pk2_oral_idr" in listing and "uva_padova" in listing  # the last rows flushed
    _cohort(["no-such-command"], off, tmp_path, returncode=2)
    bad = _cohort(["simulate", "--model", "nosuch", "-o", "x.zarr"], off, tmp_path, 2)
    assert "unknown model 'nosuch'" in bad.stderr
    assert not (tmp_path / "x.zarr").exists()
    proc = _cohort([*SIMULATE, "-o", "run.zarr"], off, tmp_path)
    assert "done in" in proc.stdout
    assert np.isfinite(_conc(tmp_path / "run.zarr")).all()  # complete and readable


def test_cached_runs_are_bit_identical_and_survive_corruption(tmp_path):
    cache = tmp_path / "cache"
    on = {"COHORT_CACHE_DIR": str(cache), "COHORT_NO_COMPILE_CACHE": ""}
    off = {"COHORT_NO_COMPILE_CACHE": "1", "COHORT_CACHE_DIR": str(tmp_path / "unused")}
    _cohort([*SIMULATE, "-o", "plain.zarr"], off, tmp_path)
    assert not (tmp_path / "unused").exists()  # turned off: nothing written
    _cohort([*SIMULATE, "-o", "first.zarr"], on, tmp_path)
    (folder,) = cache.iterdir()
    import jax
    import jaxlib

    assert folder.name == f"jax-{jax.__version__}-jaxlib-{jaxlib.__version__}"
    entries = sorted(folder.glob("*-cache"))
    assert entries, "the solve's program was not cached"
    (program,) = (folder / "programs").glob("*.jaxexport")  # the traced solve, stored too
    os.utime(program, (0, 0))
    _cohort([*SIMULATE, "-o", "cached.zarr"], on, tmp_path)
    assert program.stat().st_mtime > 0  # read back (a use refreshes its time)
    assert sorted(folder.glob("*-cache")) == entries  # and its compiled form found
    for entry in entries:  # corrupt every entry: each must be recompiled, not fatal
        entry.write_bytes(b"not a compiled program")
    program.write_bytes(b"not a traced program either")
    proc = _cohort([*SIMULATE, "-o", "corrupt.zarr"], on, tmp_path)
    assert "ignoring an unreadable cached program" in proc.stderr
    ref = _conc(tmp_path / "plain.zarr")
    assert np.isfinite(ref).all()
    for name in ("first.zarr", "cached.zarr", "corrupt.zarr"):
        np.testing.assert_array_equal(_conc(tmp_path / name), ref, err_msg=name)


def test_stored_programs_are_lowered_without_scipy_unless_they_use_lapack(tmp_path):
    """Lowering a stored program skips the ``scipy.linalg`` import JAX makes to load LAPACK
    (0.2-0.3 s of every repeated command) only when the program has no LAPACK call; one that
    has (a matrix inverse) still gets LAPACK loaded and computes the right numbers."""
    code = f"""
import sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", {str(tmp_path)!r})
from cohort.engine import exported

def run(fn, x):
    stored = jax.export.export(jax.jit(fn))(x)
    exported.save("k" + fn.__name__, stored)
    again = exported.load("k" + fn.__name__)
    return exported.lower(jax.jit(again.call), again, x).compile()(x)

def plain(x):
    return jnp.cumsum(x * 2.0)

def inverse(x):
    return jnp.linalg.inv(x)

print(np.asarray(run(plain, jnp.arange(4.0))).tolist(), "scipy.linalg" in sys.modules)
m = jnp.array([[2.0, 1.0], [1.0, 3.0]])
print(np.allclose(run(inverse, m) @ m, np.eye(2)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.strip().splitlines()
    assert first == "[0.0, 2.0, 6.0, 12.0] False"
    assert second == "True"


def test_only_cohort_code_is_stored_as_a_traced_program():
    """A stored trace is keyed on cohort's own source; a model whose code is elsewhere (not
    registered by cohort) is never stored, and the key changes with the input shapes."""
    from cohort.engine.exported import builtin_model_key, program_key
    from cohort.models import get

    model = get("pk2_oral_idr")
    assert builtin_model_key(model).startswith("pk2_oral_idr:")
    base = get("pk1_iv")

    def like(cls, registered):  # the built-in's fields in another instance
        obj = object.__new__(cls)
        obj.__dict__.update({k: v for k, v in vars(base).items() if registered or k[0] != "_"})
        return obj

    class Mine(type(base)):  # a user's model: its code is not in the digest
        pass

    assert builtin_model_key(like(type(base), registered=False)) is None
    assert builtin_model_key(like(Mine, registered=True)) is None
    a = program_key("x", {"CL": np.zeros(16)}, 1)
    assert a == program_key("x", {"CL": np.ones(16)}, 1)  # values are not part of it
    assert a != program_key("x", {"CL": np.zeros(32)}, 1)
    assert a != program_key("x", {"CL": np.zeros(16)}, 2)
    assert program_key("<object at 0x7f>", {}, 1) is None


def test_library_cache_is_opt_in(tmp_path):
    code = (
        "import json, os, sys\n"
        "import cohort.devices as d\n"
        "import jax\n"
        "before = jax.config.jax_compilation_cache_dir\n"
        f"folder = d.enable_compile_cache({str(tmp_path)!r}, max_bytes=10**8)\n"
        "print(json.dumps([before, jax.config.jax_compilation_cache_dir, str(folder),\n"
        "                  jax.config.jax_compilation_cache_max_size]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    before, after, folder, size = json.loads(out.stdout)
    assert before is None and after == folder and folder.startswith(str(tmp_path))
    assert size == 10**8


@pytest.mark.parametrize("value", ["0", "-3"])
def test_request_cpu_devices_rejects_nonsense(value):
    from cohort.devices import request_cpu_devices

    with pytest.raises(ValueError, match="n must be >= 1"):
        request_cpu_devices(int(value))


def test_repeated_glucose_command_reuses_its_screened_patients(tmp_path):
    """``cohort glucose`` keeps its patients screened for plausible outcomes beside the
    compilation cache: a repeated command reads them back and gives the same store."""
    cache = tmp_path / "cache"
    on = {"COHORT_CACHE_DIR": str(cache), "COHORT_NO_COMPILE_CACHE": ""}
    args = ["glucose", "--n", "12", "--days", "0.25", "--seed", "4"]
    _cohort([*args, "-o", "first.zarr"], on, tmp_path)
    (table,) = cache.glob("*/tables/plausible-*.npz")
    os.utime(table, (0, 0))
    _cohort([*args, "-o", "again.zarr"], on, tmp_path)
    assert table.stat().st_mtime > 0  # read back, not recomputed
    from cohort.store import open_result

    a, b = open_result(tmp_path / "first.zarr"), open_result(tmp_path / "again.zarr")
    for name in ("Gsub", "CGM", "insulin", "BW", "tir_70_180"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
