"""Batching: a padded, vmapped batch of mixed regimens behaves like independent patients."""

from __future__ import annotations

import numpy as np
import pytest

import cohort
from cohort import Regimen, Status
from cohort.engine import batching

PK2_ORAL = cohort.models.get("pk2_oral")
PK1_ORAL = cohort.models.get("pk1_oral")
PKPD = cohort.models.get("pk2_oral_idr")
TIMES = cohort.grid(0.0, 36.0, 1.0)
METHODS = ("closed_form", "diffrax", "fast")


def random_cohort(rng, n):
    def ln(mu, cv):
        return mu * np.exp(cv * rng.standard_normal(n))

    return {
        "CL": ln(3.0, 0.4),
        "V1": ln(30.0, 0.3),
        "Q": ln(4.0, 0.4),
        "V2": ln(60.0, 0.3),
        "KA": ln(1.0, 0.5),
        "F": rng.uniform(0.3, 1.0, n),
        "ALAG": rng.uniform(0.0, 1.5, n),
    }


N_MIXED = 12
MIXED_POP = random_cohort(np.random.default_rng(20240611), N_MIXED)
TEMPLATES = [
    [Regimen(320.0, "depot", ii=12.0, addl=2)],
    [Regimen(90.0, "central", time=2.5, rate=30.0), Regimen(200.0, "depot", time=10.0)],
    [],  # no doses at all
    [
        Regimen(100.0, "depot", time=5.25),
        Regimen(50.0, "central", time=5.25),
        Regimen(100.0, "depot", time=17.6, ii=6.0, addl=1),
    ],
    # a dose before the first save time, then an infusion between grid points
    [Regimen(400.0, "depot", time=-3.0), Regimen(60.0, "central", time=20.2, duration=1.7)],
]
MIXED_DOSING = [TEMPLATES[i % len(TEMPLATES)] for i in range(N_MIXED)]


def run(model, pop, dosing, method, times=TIMES, **kw):
    return cohort.simulate(model, pop, dosing, times, method=method, **kw)


@pytest.mark.parametrize(
    "method", ["closed_form", "fast", pytest.param("diffrax", marks=pytest.mark.slow)]
)
def test_mixed_batch_equals_per_patient_loop(method):
    batch = run(PK2_ORAL, MIXED_POP, MIXED_DOSING, method)
    np.testing.assert_array_equal(batch.status.values, 0)
    conc = batch.conc.values
    assert np.all(conc[2] == 0.0)  # the undosed patient stays empty
    assert conc[0].max() > 1.0 and conc[4, 0] > 1.0  # real doses went in (incl. before t=0)
    for i, regs in enumerate(TEMPLATES):  # one single-patient run per distinct regimen
        pop = {k: v[i : i + 1] for k, v in MIXED_POP.items()}
        single = run(PK2_ORAL, pop, [regs], method)
        assert single.status.values[0] == 0
        if method != "closed_form":
            # Equal to rounding: diffrax vectorises the batch, and the fast path runs an
            # interval through its event loop for everyone when any patient has a dose there.
            np.testing.assert_allclose(
                conc[i],
                single.conc.values[0],
                rtol=1e-10,
                atol=1e-12 * conc[i].max(),
                err_msg=f"patient {i}",
            )
        else:  # exact per patient: bit-identical whatever its batch
            np.testing.assert_array_equal(conc[i], single.conc.values[0], f"patient {i}")


def test_methods_agree_on_random_mixed_batch():
    ref = run(PK2_ORAL, MIXED_POP, MIXED_DOSING, "closed_form").conc.values
    scale = ref.max(axis=1, keepdims=True) + 1e-300
    dfx = run(PK2_ORAL, MIXED_POP, MIXED_DOSING, "diffrax").conc.values
    fast = run(PK2_ORAL, MIXED_POP, MIXED_DOSING, "fast").conc.values
    assert np.max(np.abs(dfx - ref) / scale) < 1e-6
    # RK4 with dt = 5 min, split exactly at doses: fourth order, well below 1e-5.
    assert np.max(np.abs(fast - ref) / scale) < 1e-5


def test_fast_float32_pkpd_close_to_float64_diffrax():
    rng = np.random.default_rng(7)
    n = 8
    pop = random_cohort(rng, n) | {
        "KIN": 10.0 * np.exp(0.2 * rng.standard_normal(n)),
        "KOUT": 0.1 * np.exp(0.2 * rng.standard_normal(n)),
        "IMAX": rng.uniform(0.5, 0.95, n),
        "EC50": 5.0 * np.exp(0.3 * rng.standard_normal(n)),
    }
    dosing = Regimen(320.0, "depot", ii=12.0, addl=3)
    ref = run(PKPD, pop, dosing, "diffrax")
    f32 = run(PKPD, pop, dosing, "fast", dtype="float32")
    assert f32.conc.dtype == np.float32 and f32.response.dtype == np.float32
    assert ref.conc.dtype == np.float64
    np.testing.assert_array_equal(ref.status.values, 0)
    np.testing.assert_array_equal(f32.status.values, 0)
    for name in ("conc", "response"):
        a, b = ref[name].values, f32[name].values.astype(np.float64)
        scale = np.max(np.abs(a), axis=1, keepdims=True)
        err = np.max(np.abs(a - b) / scale, axis=1)
        assert np.all(err < 1e-3), (name, err)
    # The PD actually responds (inhibition lowers the response below baseline KIN/KOUT).
    baseline = pop["KIN"] / pop["KOUT"]
    assert np.all(ref.response.values.min(axis=1) < 0.9 * baseline)


BAD_POP = {
    "CL": np.array([3.0, 3.0, 1e3, np.nan, 2.0]),
    "V": np.array([30.0, 30.0, 1e-3, 30.0, 25.0]),
    "KA": np.array([1.0, 1e5, 1.0, 1.0, 0.7]),
}
BAD = [1, 2, 3]  # KA above its bound; CL/V = 1e6 /h (in bounds, absurdly stiff); CL = nan


@pytest.mark.parametrize("method", METHODS)
def test_bad_patients_are_isolated(method):
    dosing = [[Regimen(100.0, "depot", ii=12.0, addl=1)]] * 3 + [
        [Regimen(100.0, "depot", time=4.0), Regimen(10.0, "central", time=7.0, duration=2.0)]
    ] * 2
    opts = cohort.DiffraxOptions(max_steps=2048) if method == "diffrax" else None
    bad = run(PK1_ORAL, BAD_POP, dosing, method, options=opts)
    clean_pop = {k: v.copy() for k, v in BAD_POP.items()}
    for k in clean_pop:  # replace the bad patients by defaults: same batch shape, clean run
        clean_pop[k][BAD] = PK1_ORAL.defaults()[k]
    clean = run(PK1_ORAL, clean_pop, dosing, method, options=opts)
    np.testing.assert_array_equal(clean.status.values, 0)
    status = bad.status.values
    assert status[1] == Status.INVALID_PARAMETERS
    assert status[3] == Status.INVALID_PARAMETERS
    if method == "closed_form":
        assert status[2] == Status.OK  # exact solution: stiffness is no problem
    else:
        assert status[2] != Status.OK
    good = [0, 4]
    np.testing.assert_array_equal(status[good], 0)
    assert np.all(np.isnan(bad.conc.values[status != 0]))
    # Neighbours of failing patients are bit-for-bit those of the clean run.
    np.testing.assert_array_equal(bad.conc.values[good], clean.conc.values[good])
    # Parameters are reported as given (not replaced by defaults).
    assert bad.KA.values[1] == 1e5 and np.isnan(bad.CL.values[3])


@pytest.mark.parametrize("method", ("closed_form", "fast"))
def test_chunk_size_does_not_change_results(method):
    whole = run(PK2_ORAL, MIXED_POP, MIXED_DOSING, method)
    chunked = run(PK2_ORAL, MIXED_POP, MIXED_DOSING, method, chunk_size=5)  # 5 + 5 + 2 (padded)
    assert chunked.attrs["chunk_size"] == 5
    np.testing.assert_array_equal(whole.status.values, chunked.status.values)
    np.testing.assert_array_equal(whole.conc.values, chunked.conc.values)
    np.testing.assert_array_equal(chunked.CL.values, MIXED_POP["CL"])
    # One patient per batch too (a size-1 batch axis is padded: XLA would specialise it).
    single = run(PK2_ORAL, MIXED_POP, MIXED_DOSING, method, chunk_size=1)
    np.testing.assert_array_equal(whole.conc.values, single.conc.values)


def test_single_dose_patients_do_not_depend_on_their_batch():
    """Patients with no record after the first save time take the closed form's one-segment
    pass (a table of powers, no time loop); in a batch that also holds multiple-dose patients
    they must get the very same numbers, and the same as when run one by one."""
    single, multi = [Regimen(320.0, "depot")], [Regimen(320.0, "depot", ii=12.0, addl=2)]
    alone = run(PK2_ORAL, MIXED_POP, [single] * N_MIXED, "closed_form").conc.values
    mixed = [single if i % 2 else multi for i in range(N_MIXED)]
    together = run(PK2_ORAL, MIXED_POP, mixed, "closed_form").conc.values
    odd = np.arange(1, N_MIXED, 2)
    np.testing.assert_array_equal(together[odd], alone[odd])
    for i in (0, 5):
        one = {k: v[i : i + 1] for k, v in MIXED_POP.items()}
        np.testing.assert_array_equal(
            run(PK2_ORAL, one, single, "closed_form").conc.values[0], alone[i]
        )
    # and the one-segment pass is exact: against the multiple-dose run before its 2nd dose
    before = TIMES < 12.0
    np.testing.assert_allclose(together[0, before], alone[0, before], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ("closed_form", "fast"))
def test_reused_output_buffers_keep_every_batch(method, tmp_path, monkeypatch):
    """Batches after the first few are solved into the donated output buffers of batches
    already written; every batch must still land intact, in memory and in a store, with bad
    patients' rows NaN in both."""
    fresh = []
    call = batching.BatchSolver.__call__

    def spy(self, inputs, shared, buffers):
        fresh.append(buffers is None)
        return call(self, inputs, shared, buffers)

    monkeypatch.setattr(batching.BatchSolver, "__call__", spy)
    pop = {k: v.copy() for k, v in MIXED_POP.items()}
    pop["KA"][7] = 1e5  # above its bound: INVALID_PARAMETERS, NaN outputs
    whole = run(PK2_ORAL, pop, MIXED_DOSING, method)
    fresh.clear()
    pairs = run(PK2_ORAL, pop, MIXED_DOSING, method, chunk_size=2)  # 6 batches
    assert len(fresh) == 6 and fresh.count(False) >= 6 - batching.MAX_IN_FLIGHT - 1
    stored = run(PK2_ORAL, pop, MIXED_DOSING, method, chunk_size=2, out=str(tmp_path / "s.zarr"))
    for ds in (pairs, stored):
        np.testing.assert_array_equal(ds.status.values, whole.status.values)
        np.testing.assert_array_equal(ds.conc.values, whole.conc.values)
    assert whole.status.values[7] == Status.INVALID_PARAMETERS
    assert np.all(np.isnan(whole.conc.values[7])) and np.all(np.isfinite(whole.conc.values[:7]))


def test_default_chunk_shrinks_to_fit_available_memory(monkeypatch):
    """The default batch is kept when it fits in a quarter of the available memory, else the
    largest power of two that does; unknown memory keeps the default."""
    from cohort.engine import batching

    monkeypatch.setattr(batching, "available_memory", lambda: 16 * 2**30)
    assert batching.memory_chunk(16_384, 2_312) == 16_384  # 289 times x 2 float32 outputs
    per_patient = 100_000 * 2 * 8  # a 100,000-point grid, 2 float64 outputs: 1.6 MB
    fit = int(0.25 * 16 * 2**30) // ((batching.MAX_IN_FLIGHT + 1) * per_patient)
    got = batching.memory_chunk(16_384, per_patient)
    assert got <= fit < 2 * got and got & (got - 1) == 0
    monkeypatch.setattr(batching, "available_memory", lambda: None)
    assert batching.memory_chunk(16_384, per_patient) == 16_384
    monkeypatch.undo()
    real = batching.available_memory()
    assert real is None or 2**20 < real < 2**50  # Linux: MemAvailable in bytes


def test_resume_without_chunk_size_continues_the_stored_batches(tmp_path):
    import zarr

    from cohort.engine.simulate import simulate
    from cohort.population import lognormal
    from cohort.store import open_result

    pop = lognormal(PK1_ORAL, 120, seed=1)
    out = str(tmp_path / "r.zarr")
    simulate("pk1_oral", pop, None, np.linspace(0, 12, 13), chunk_size=40, out=out)
    group = zarr.open_group(out, mode="r+")
    group["chunk_done"][1] = False
    group["conc"][40:80] = -1.0
    simulate("pk1_oral", pop, None, np.linspace(0, 12, 13), out=out, resume=True)
    ds = open_result(out)
    assert ds.attrs["chunk_size"] == 40 and bool(ds["chunk_done"].all())
    assert float(ds["conc"][40:80].min()) >= 0.0


def test_results_do_not_depend_on_the_chunk_size_to_the_bit():
    """DESIGN §4: same inputs = bit-identical cohort whatever the batch size (padded batches:
    no patient falls in XLA's scalar remainder loop)."""
    from cohort.population import lognormal

    pop = lognormal(PKPD, 300, seed=4)
    dose = Regimen(amt=320.0, ii=12.0, addl=3, cmt="depot")
    runs = [
        cohort.simulate(PKPD, pop, dose, np.linspace(0, 48, 97), method="fast", chunk_size=c)
        for c in (75, 76, 300)
    ]
    for ds in runs[1:]:
        for name in ("conc", "response"):
            assert ds[name].values.tobytes() == runs[0][name].values.tobytes(), name


def test_nearby_cohort_sizes_share_one_compiled_program():
    """Batches are padded on a coarse ladder (beyond 64 rows, <= 25 % padding): 150 and 135
    patients run the same compiled program, 170 a larger one; a patient's values do not
    depend on it."""
    from cohort.engine.batching import bucket
    from cohort.timing import phases

    assert [bucket(r) for r in (1, 17, 65, 129, 150, 257, 5000)] == [
        16,
        32,
        80,
        160,
        160,
        320,
        5120,
    ]
    assert all(r <= bucket(r) <= 1.25 * r for r in range(64, 3000))
    times = cohort.grid(0.0, 24.0, 1.0)

    def run(n):
        rng = np.random.default_rng(3)
        pop = {"CL": 5.0 * np.exp(0.3 * rng.standard_normal(n)), "KA": np.full(n, 1.0)}
        with phases() as spent:
            ds = cohort.simulate("pk2_oral_idr", pop, Regimen(100.0, "depot"), times, method="fast")
        return ds.conc.values, spent

    a, _ = run(150)
    b, spent = run(135)
    assert "/jax/core/compile/backend_compile_duration" not in spent
    np.testing.assert_array_equal(b, a[:135])
    _, spent = run(170)
    assert spent.get("/jax/core/compile/backend_compile_duration", 0.0) > 0


def test_time_split_files_patient_sampling_apart_from_startup_and_compiles():
    """A preparatory step timed with ``timing.step`` is shown apart; its own
    compilation stays in the compile total, not counted twice."""
    import time

    import jax
    import jax.numpy as jnp

    from cohort.timing import describe, phases, step

    with phases() as spent, step(spent, "sampling"):
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 0.123456)(jnp.arange(7.0)).block_until_ready()
        time.sleep(0.3)
    compiled = spent.get("/jax/core/compile/backend_compile_duration", 0.0)
    assert compiled > 0
    assert 0.3 <= spent["sampling"] < 0.3 + 0.25
    assert spent["sampling"] + compiled <= spent["wall"] + 1e-9
    text = describe(spent)
    assert f"patient sampling {spent['sampling']:.1f} s" in text
    assert text.startswith("time: startup ")


def test_a_program_compiled_on_another_thread_is_built_once_and_used():
    """``BatchSolver.compile`` on background threads while the caller prepares its batches:
    one build for all of them (a batch arriving meanwhile waits for it), the same values as a
    solver that compiles at its first batch, and the background thread's compile time is
    recorded apart from the caller's (``timing.phases`` collects per thread)."""
    import threading

    import jax.numpy as jnp

    from cohort.timing import describe, phases

    traces = []

    def make_solve():  # a new function each time: jax.jit keeps traces per function
        def solve(inputs, shared):
            traces.append(1)
            x = inputs["x"]
            y = jnp.stack([jnp.sin(x * k) + shared for k in range(1, 6)])  # [T, B]
            return {"y": y}, jnp.zeros(x.shape, jnp.int8), {"m": x.sum() + 0 * x}

        return solve

    inputs, shared = {"x": np.linspace(0.0, 1.0, 32)}, np.float64(0.25)
    solver = batching.BatchSolver(make_solve(), 1)
    records = []

    def build():
        with phases() as spent:
            solver.compile(inputs, shared)
        records.append(spent)

    threads = [threading.Thread(target=build) for _ in range(3)]
    with phases() as caller:
        for t in threads:
            t.start()
        out, status, extras = solver(inputs, shared, None)
        for t in threads:
            t.join()
    built_once = len(traces)
    reference = batching.BatchSolver(make_solve(), 1)(inputs, shared, None)
    assert len(traces) == 2 * built_once  # the reference solver traced as often: one build
    np.testing.assert_array_equal(np.asarray(out["y"]), np.asarray(reference[0]["y"]))
    key = "/jax/core/compile/backend_compile_duration"
    builders = [r for r in records if r.get(key, 0.0) > 0]
    assert len(builders) <= 1  # of the background threads, at most one built the program
    if builders:  # and its compilation is shown apart from the caller's
        assert "traced and compiled alongside" in describe(caller, builders[0])


def test_host_inputs_are_derived_per_batch_for_calls_and_ahead_of_time_compiles():
    """``host_inputs`` turns a batch's rows into the program's inputs on the host (the closed
    loop's CGM noise, keyed by patient id): each batch gets its own rows' values, and a
    program compiled ahead of time from the rows is the one the calls use."""
    import jax.numpy as jnp

    def solve(inputs, shared):
        x, extra = inputs
        return {"y": jnp.stack([x + extra, x * shared])}, jnp.zeros(x.shape, jnp.int8), {}

    seen = []

    def expand(rows, shared):
        seen.append(rows["id"].copy())
        return rows["x"], 100.0 * rows["id"]

    solver = batching.BatchSolver(solve, 1, host_inputs=expand)
    rows = {"x": np.arange(16.0), "id": np.arange(16.0) + 40}
    solver.compile(rows, np.float64(2.0))
    n_programs = len(solver._programs)
    out, _, _ = solver(rows, np.float64(2.0), None)
    assert len(solver._programs) == n_programs == 1  # the ahead-of-time build was used
    np.testing.assert_array_equal(np.asarray(out["y"][0]), rows["x"] + 100.0 * rows["id"])
    np.testing.assert_array_equal(np.asarray(out["y"][1]), 2.0 * rows["x"])
    assert len(seen) == 2 and (seen[1] == rows["id"]).all()


def test_adaptive_lockstep_groups_do_not_change_results():
    """The adaptive engine steps a device's patients in groups of at most 256 on CPU (each
    group until its slowest patient is done): a patient's numbers must not depend on the
    group it fell in, nor on whether its batch was split at all."""
    from cohort.engine.diffrax_path import lockstep_group
    from cohort.population import lognormal

    assert lockstep_group(64) == 64 and lockstep_group(320) == 160
    assert lockstep_group(5120) == 256 and lockstep_group(1000) == 1000  # not a 16-multiple
    pop = lognormal(PKPD, 700, seed=5)
    dose = Regimen(amt=320.0, ii=12.0, addl=1, cmt="depot")
    grouped, whole = (
        cohort.simulate(PKPD, pop, dose, np.linspace(0, 24, 25), method="diffrax", chunk_size=c)
        for c in (700, 100)  # 384 or 768 rows per device: groups; 64 or 112: one group
    )
    np.testing.assert_array_equal(grouped.status.values, 0)
    for name in ("conc", "response"):
        assert grouped[name].values.tobytes() == whole[name].values.tobytes(), name


def test_engine_compiler_options_reach_xla_and_unknown_ones_fall_back(monkeypatch):
    """An engine's XLA options are used for every batch program it compiles (the adaptive
    engine compiles with XLA's classic CPU emitters: same values to round-off), and an
    option this XLA does not know is dropped rather than failing the run."""
    import dataclasses

    import jax

    from cohort.engine.diffrax_path import Adaptive
    from cohort.population import lognormal

    if jax.default_backend() == "cpu":
        assert Adaptive().compiler_options(PKPD) == {"xla_cpu_use_fusion_emitters": False}
    used = []
    compile_ = jax.stages.Lowered.compile

    def spy(self, compiler_options=None):
        used.append(dict(compiler_options or {}))
        return compile_(self, compiler_options=compiler_options)

    monkeypatch.setattr(jax.stages.Lowered, "compile", spy)

    @dataclasses.dataclass(frozen=True)
    class Defaults(Adaptive):
        def compiler_options(self, model):
            return {}

    @dataclasses.dataclass(frozen=True)
    class Unknown(Adaptive):
        def compiler_options(self, model):
            return {"xla_cpu_no_such_option_in_any_xla": True}

    pop = lognormal(PKPD, 40, seed=3)
    dose = Regimen(amt=320.0, ii=12.0, addl=2, cmt="depot")
    grid = np.linspace(0, 36, 37)
    runs = {
        name: cohort.simulate(PKPD, pop, dose, grid, method=engine)
        for name, engine in (("own", Adaptive()), ("xla", Defaults()), ("unknown", Unknown()))
    }
    assert {"xla_cpu_no_such_option_in_any_xla": True} in used  # tried, then dropped
    if jax.default_backend() == "cpu":
        assert {"xla_cpu_use_fusion_emitters": False} in used
    for name in ("conc", "response"):
        own, xla = runs["own"][name].values, runs["xla"][name].values
        np.testing.assert_allclose(own, xla, rtol=1e-12, atol=1e-12)
        assert runs["unknown"][name].values.tobytes() == xla.tobytes()  # XLA's defaults


@pytest.mark.slow
def test_stiff_adaptive_lockstep_groups_do_not_change_results():
    """The same for an implicit solver (Kvaerno5 on the stiff TMDD model, one device)."""
    from cohort.population import lognormal

    tmdd = cohort.models.get("tmdd_qss")
    pop = lognormal(tmdd, 300, seed=6)
    dose = Regimen(amt=100.0, cmt="central", ii=24.0, addl=1)
    grouped, whole = (
        cohort.simulate(tmdd, pop, dose, np.linspace(0, 48, 25), method="diffrax", chunk_size=c)
        for c in (300, 100)  # 320 rows: groups of 160; 112 rows: one group
    )
    np.testing.assert_array_equal(grouped.status.values, 0)
    for name in ("conc", "ctot"):
        assert grouped[name].values.tobytes() == whole[name].values.tobytes(), name


def test_work_moved_to_a_thread_with_timing_apart_is_shown_alongside():
    """A fit compiles its objective on a background thread while the initial estimates are
    scanned; the CLI's time line left that compile out. ``timing.apart`` records the thread's
    JAX events in the caller's record under ``alongside``, which ``describe`` shows."""
    import threading

    import jax
    import jax.numpy as jnp

    from cohort.timing import apart, describe, phases

    def build():
        jax.jit(lambda x: jnp.cumsum(jnp.sin(x) * 3.0)).lower(jnp.ones(7)).compile()

    with phases() as caller:
        thread = threading.Thread(target=apart(build))
        thread.start()
        thread.join()
    side = caller["alongside"]
    assert side["/jax/core/compile/backend_compile_duration"] > 0
    assert "/jax/core/compile/backend_compile_duration" not in caller  # not the caller's own
    shown = describe(caller, {"/jax/core/compile/backend_compile_duration": 0.5})
    assert "traced and compiled alongside 0.5 s" in shown
    assert apart(build) is build  # outside a phases block: the function itself


def test_a_first_store_run_counts_its_background_compile_in_its_time_split(tmp_path):
    """The program of a first run into a store is compiled on a background thread while the
    store is created; the user waits for it, so it is the command's compile time (a revision
    wrapped the compile on the background thread, whose empty record dropped it: the CLI
    printed "compile 0.0 s")."""
    import numpy as np

    import cohort
    from cohort.timing import phases, summary

    pop = {"CL": np.full(7, 2.0), "V1": np.full(7, 20.0)}
    with phases() as spent:  # a save grid no other test uses: a program compiled here
        cohort.simulate("pk2_oral", pop, cohort.Regimen(amt=100.0, cmt="depot"),
                        cohort.grid(0.0, 13.7, 0.1), out=str(tmp_path / "r.zarr"))  # fmt: skip
    assert summary(spent)["compile_s"] > 0
