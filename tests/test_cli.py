"""CLI: demo writes a store + figure + table; bad arguments give clear errors, not tracebacks."""

import numpy as np
from typer.testing import CliRunner

import cohort
from cohort.cli import app

runner = CliRunner()


def flat(res) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(res.output.split())


def test_demo_writes_store_plot_and_summary(tmp_path):
    out, png = tmp_path / "demo.zarr", tmp_path / "demo.png"
    res = runner.invoke(app, ["demo", "--n", "200", "--out", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "Cmax" in flat(res) and "ok=200" in flat(res)
    ds = cohort.open_result(out)
    assert ds.sizes["patient"] == 200 and ds.sizes["time"] == 337
    assert bool(ds.chunk_done.all()) and int((ds.status == 0).sum()) == 200
    assert png.stat().st_size > 10_000
    assert np.all(np.isfinite(ds.conc.values)) and float(ds.conc.max()) > 1.0


def test_simulate_info_and_resume(tmp_path):
    out = tmp_path / "x.zarr"
    args = [
        "simulate",
        "--model",
        "pk1_oral",
        "--n",
        "50",
        "--amt",
        "500",
        "--ii",
        "12",
        "--addl",
        "2",
        "--t-end",
        "48",
        "-o",
        str(out),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "already exists" in flat(res)
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "mg/L" in flat(res) and "closed_form" in flat(res)


def test_bad_arguments_are_clear(tmp_path):
    cases = [
        (["simulate", "--model", "nope"], "unknown model 'nope'"),
        (["simulate", "--model", "pk1_oral", "--cmt", "periph"], "--cmt"),
        (["simulate", "--method", "magic", "-o", str(tmp_path / "a.zarr")], "method"),
        (["simulate", "--n", "0"], "--n must be >= 1"),
        (["simulate", "--dosing", str(tmp_path / "missing.csv")], "no such file"),
        (["info", str(tmp_path / "none.zarr")], "no result store"),
        (["models", "pk7"], "unknown model"),
    ]
    for args, text in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert text in flat(res), (args, res.output)
        assert "Traceback" not in res.output


def test_models_listing():
    res = runner.invoke(app, ["models", "pk2_oral"])
    assert res.exit_code == 0 and "L/h" in res.output and "depot" in res.output


def test_generate_then_simulate_population_store(tmp_path):
    from pathlib import Path

    spec = Path(__file__).resolve().parents[1] / "priors" / "neonate_phenobarbital.toml"
    pop, png = tmp_path / "pop.zarr", tmp_path / "pop.png"
    res = runner.invoke(
        app, ["generate", str(spec), "--n", "500", "-o", str(pop), "--plot", str(png)]
    )
    assert res.exit_code == 0, res.output
    assert "acceptance rate" in flat(res) and png.stat().st_size > 5_000
    out = tmp_path / "sim.zarr"
    res = runner.invoke(
        app,
        [
            "simulate",
            "--model",
            "pk1_iv",
            "--population",
            str(pop),
            "--amt",
            "20",
            "--t-end",
            "24",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    ds, p = cohort.open_result(out), cohort.population.generate(spec, 500, seed=1)
    np.testing.assert_array_equal(ds.CL.values, p.CL.values)
    # 1-cpt IV bolus: C(0) = 20 / V for every virtual neonate.
    np.testing.assert_allclose(ds.conc.values[:, 0], 20 / p.V.values, rtol=1e-12)
    res = runner.invoke(app, ["generate", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "no such spec file" in flat(res)


def test_demo_with_other_settings_into_its_store_is_a_clear_error(tmp_path):
    out = tmp_path / "demo.zarr"
    args = ["demo", "--out", str(out), "--plot", str(tmp_path / "d.png")]
    assert runner.invoke(app, [*args, "--n", "50"]).exit_code == 0
    res = runner.invoke(app, [*args, "--n", "60"])
    assert res.exit_code == 2 and "holds a demo run with other settings" in flat(res)
    assert cohort.open_result(out).sizes["patient"] == 50  # untouched
