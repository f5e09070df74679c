"""Reference path: adaptive diffrax solves per patient, ``vmap``-ed over the cohort.

Doses are discontinuities, so the time axis is cut at every change record (bolus, infusion
start/stop, reset) and each segment is solved separately from the updated state: nothing is
smeared. Saves inside a segment use ``SaveAt(ts=clip(times, segment))`` and are kept where they
fall in ``[start, end)`` (right-continuous at doses). Solves use ``throw=False``; each patient's
``sol.result`` becomes its status code, so one failing patient never poisons the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cohort.engine.base import Engine, one_ss_record_per_patient, register_engine
from cohort.engine.common import apply_change, first_ss_index, solution_status
from cohort.engine.events import SS_INFUSION, resolve
from cohort.engine.inputs import InputError
from cohort.engine.status import Status
from cohort.engine.steady_state import iterate_to_steady_state
from cohort.models.base import Model, Tree


@register_engine("diffrax", "adaptive")
@dataclasses.dataclass(frozen=True)
class Adaptive(Engine):
    """Adaptive diffrax solves per patient, ``vmap``-ed (the reference). ``solver=None`` picks
    Tsit5, or Kvaerno5 for stiff models; ``rtol``/``atol`` drive its PID step controller."""

    solver: Any = None
    rtol: float = 1e-8
    atol: float = 1e-10
    max_steps: int = 100_000
    ss_max_cycles: int = 1000
    ss_rtol: float = 1e-10
    name = "diffrax"
    default_chunk = 10_000

    def pick_solver(self, model: Model):
        if isinstance(self.solver, str):  # "Kvaerno5": diffrax's solver of that name
            import diffrax as dfx

            return getattr(dfx, self.solver)()
        if self.solver is not None:
            return self.solver
        import diffrax as dfx  # here: a run from a stored program never imports diffrax

        return dfx.Kvaerno5() if model.stiff else dfx.Tsit5()

    def max_devices(self, model: Model) -> int | None:
        # An implicit solver's Newton step (lineax) compares the shapes of its iterate with
        # the structure it traced, and inside ``shard_map`` those carry the device mesh's
        # sharding while the iterate's do not: every stiff solve raised "pytree does not
        # match out_structure" once batches were split over devices (diffrax 0.7.2, lineax
        # 0.1.1, JAX 0.10). Such batches run on one device; explicit solvers use them all.
        if self.solver is None:  # the default's kind is known without importing diffrax
            return 1 if model.stiff else None
        return 1 if isinstance(self.pick_solver(model), _implicit()) else None

    def compiler_options(self, model: Model) -> dict:
        # XLA's CPU fusion emitters (its default) compile this program's many small fusions
        # (a vmapped while loop of solver stages and step control) ~30 % slower than its
        # classic emitters, which run it about as fast: a new user's first 100-patient
        # ``cohort simulate`` of pk2_oral_idr compiled in 1.7-1.9 s against 1.3-1.4 s;
        # solving 8,000 such patients over a 14-dose week took 4.26-4.37 s against
        # 4.14-4.19 s, 4,000 stiff tmdd_qss patients (Kvaerno5) 25.4-26.4 s against
        # 26.9-27.1 s (2-core CPU, issue 16). Values agree to round-off (1e-14). The fast
        # path's long elementwise kernels are the opposite (twice as slow without the
        # fusion emitters), so the option is this engine's alone.
        if jax.default_backend() != "cpu":
            return {}
        return {"xla_cpu_use_fusion_emitters": False}

    def describe(self, model: Model) -> dict:
        default = "Kvaerno5" if model.stiff else "Tsit5"
        named = self.solver if isinstance(self.solver, str) else type(self.solver).__name__
        return {
            "engine": self.name,
            "solver": default if self.solver is None else named,
            "rtol": self.rtol,
            "atol": self.atol,
            "max_steps": self.max_steps,
        }

    def validate(self, model, table, params) -> None:
        super().validate(model, table, params)
        if self.solver is not None:
            import diffrax as dfx

            named = isinstance(self.solver, str)
            kind = getattr(dfx, self.solver, None) if named else type(self.solver)
            if not (isinstance(kind, type) and issubclass(kind, dfx.AbstractSolver)):
                raise InputError(
                    f"options: Adaptive.solver must be a diffrax solver (diffrax.Kvaerno5() or "
                    f"its name 'Kvaerno5'), got {self.solver!r}"
                )
        for name in ("rtol", "atol"):
            if not getattr(self, name) > 0:
                raise InputError(f"options: Adaptive.{name} must be > 0, got {getattr(self, name)}")
        if self.max_steps < 1:
            raise InputError(f"options: Adaptive.max_steps must be >= 1, got {self.max_steps}")
        one_ss_record_per_patient(table, "diffrax")

    def batch_solve(self, model, times, t_first, infusion, ss_interval, outputs, dtype):
        nonneg = np.array([st.nonnegative for st in model.states])  # a constant: no dispatch

        def solve(p, ev):
            tj = jnp.asarray(times, dtype)

            def one(args):
                q, e = args
                return solve_patient(
                    model, q, e, tj, infusion, ss_interval > 0, self, differentiable=False
                )

            rows = jax.tree.leaves(ev)[0].shape[0]  # a model may have no parameters
            group = lockstep_group(rows)
            if group == rows:  # one group: no loop around it (a smaller program)
                states, code = jax.vmap(one)((p, ev))
            else:
                states, code = jax.lax.map(one, (p, ev), batch_size=group)
            y = {s: states[..., i] for i, s in enumerate(model.state_names)}
            status = jax.vmap(lambda x, c: solution_status(x, c, nonneg))(states, code)
            pp = {k: v[:, None] for k, v in p.items()}
            return {o: model.output(o, y, pp).astype(dtype).T for o in outputs}, status

        return solve


SAVE_WINDOW = 32  # most save times per diffrax solve (see solve_patient)
LOCKSTEP_CPU = 256  # most patients stepped together on a CPU device (see lockstep_group)


def lockstep_group(rows: int) -> int:
    """Patients per vmapped group when a device solves ``rows`` of them: the groups run one
    after another. A vmapped adaptive solve steps every patient of its group until the slowest
    one finishes, and its working set (every stage of every patient) grows with the group. On
    the 2-core CPU (two devices), 8,000 patients of ``pk2_oral_idr`` over a 14-dose week ran at
    956 patients/s as one group of 4,096 per device, 1,800-1,890/s in groups of 256 (one
    batch) and 2,340-2,400/s in batches of 2,048-4,096 (groups of 256 per device were the best
    of 128-512); a single dose over 24 h at 46,900 vs 54,700/s. Two Dask workers ran 1.70x one
    with groups and 1.0x without (``benchmarks/bench_scale.py``). Batches, and the store's
    chunks, stay large: a chunk costs the store the same at any size. A divisor of ``rows`` (a
    remainder group would be traced and compiled a second time) and a multiple of 16 rows like
    the batches (``batch_shape``); accelerators keep whole batches, which they run in
    parallel."""
    if rows <= LOCKSTEP_CPU or rows % 16 or jax.default_backend() != "cpu":
        return rows
    return max(d for d in range(16, LOCKSTEP_CPU + 1, 16) if rows % d == 0)


DiffraxOptions = Adaptive  # the earlier name of the reference engine's settings


def _implicit() -> type:
    import diffrax as dfx

    return dfx.AbstractImplicitSolver


def _code(result) -> jnp.ndarray:
    import diffrax as dfx

    ok = result == dfx.RESULTS.successful
    max_steps = result == dfx.RESULTS.max_steps_reached
    return jnp.where(ok, Status.OK, jnp.where(max_steps, Status.MAX_STEPS, Status.SOLVER_FAILED))


def solve_patient(
    model: Model,
    p: Tree,
    ev: dict,
    times: jnp.ndarray,
    with_infusion: bool,
    has_ss: bool,
    opts: Adaptive,
    *,
    differentiable: bool = True,
):
    """States ``[T, S]`` and a status code for one patient. ``differentiable=False``
    integrates in a plain ``while_loop`` (diffrax's ``ForwardMode``), which forward-mode
    derivatives (``jvp``/``jacfwd``) still go through, but not reverse mode: diffrax's default
    reverse-mode adjoint builds a checkpointed loop whose tracing and compilation cost a new
    user ~0.5 s of a 100-patient ``cohort simulate`` (issue 16) for nothing, and fits' FOCE
    Jacobians ``∂f/∂η`` (a few η, many observations) are cheaper forward. The steps and
    values are the same."""
    import diffrax as dfx

    p = model.prepare(p)
    ch = resolve(model, ev, p, with_infusion, has_ss)
    names = model.state_names

    # Each piece is solved in s in [0, 1], t = ta + s (tb - ta): diffrax unrolls 100
    # ``prevbefore`` steps of a traced end time ("t1 - 100 ULPs") into one fusion whose code
    # generation was ~0.3 s of XLA compile (issue 16); a constant end time folds it away. The
    # step controller bounds the error in y, which the time scale leaves as it is.
    def scaled(s, y, args):
        q, u, ta, width = args
        return jax.tree.map(lambda d: d * width, model.rhs(ta + s * width, y, q, u))

    term = dfx.ODETerm(scaled)
    solver = opts.pick_solver(model)
    controller = dfx.PIDController(rtol=opts.rtol, atol=opts.atol)
    y_init = model.initial(p)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(p))
    u_zero = {s: jnp.zeros((), dtype) for s in names}

    def integrate(y, u, ta, tb, ts):
        width = tb - ta
        moves = width != 0
        at = jnp.where(moves, (ts - ta) / jnp.where(moves, width, 1.0), 1.0)
        sol = dfx.diffeqsolve(
            term,
            solver,
            0.0,
            1.0,
            None,
            y,
            args=(p, u, ta, width),
            saveat=dfx.SaveAt(ts=jnp.clip(at, 0.0, 1.0), t1=True),
            stepsize_controller=controller,
            max_steps=opts.max_steps,
            throw=False,
            adjoint=dfx.RecursiveCheckpointAdjoint() if differentiable else dfx.ForwardMode(),
        )
        # a piece of zero length (a dose at the first time, SS cycles without a lag) takes
        # a few steps of a zero derivative; it cannot fail, whatever max_steps says
        return sol.ys, jnp.where(moves, _code(sol.result), Status.OK)

    def record(k):
        return {f: getattr(ch, f)[k] for f in ch._fields}

    y_ss = None
    code0 = jnp.asarray(Status.OK)
    if has_ss:
        k_ss, has_ss_record = first_ss_index(ch.kind)
        c = record(k_ss)
        c["ii"] = jnp.where(has_ss_record, c["ii"], 1.0)  # patients without SS: no cycling
        infusion = c["kind"] == SS_INFUSION
        dur = jnp.where(infusion, c["dur"], 0.0)
        lag = jnp.where(has_ss_record, c["start"] - c["time"], 0.0)

        def cycle(y):
            # One dosing interval from the record time: wait out the lag, dose (or infuse
            # until lag + dur), wash out until II.
            ys, code0 = integrate(y, u_zero, 0.0, lag, jnp.reshape(lag, (1,)))
            y = {
                s: ys[s][-1] + jnp.where(~infusion & (c["cmt"] == i), c["amount"], 0.0)
                for i, s in enumerate(names)
            }
            u = {
                s: jnp.where(infusion & (c["cmt"] == i), c["rate"], 0.0)
                for i, s in enumerate(names)
            }
            ys, code1 = integrate(y, u, lag, lag + dur, jnp.reshape(lag + dur, (1,)))
            y = {s: v[-1] for s, v in ys.items()}
            ys, code2 = integrate(y, u_zero, lag + dur, c["ii"], jnp.reshape(c["ii"], (1,)))
            code = jnp.maximum(code0, jnp.maximum(code1, code2))
            return {s: v[-1] for s, v in ys.items()}, code

        y_ss, code0 = iterate_to_steady_state(
            cycle,
            y_init,
            has_ss_record,
            max_cycles=opts.ss_max_cycles,
            rtol=opts.ss_rtol,
            floor=opts.atol,
        )

    # Pieces: the solve restarts at every change record and, on a long save grid, every
    # SAVE_WINDOW distinct save times, so that each piece saves at most SAVE_WINDOW times.
    # diffrax visits every save time it is given, also those clipped to a piece's ends:
    # saving the whole grid in every dosing interval was ~90 % of a 100-patient, 14-dose week
    # (1.2 s of 1.3 s at 673 save times). A repeated save time (fits pad each subject's times
    # with its last one) is solved once and copied.
    n_t = times.shape[0]
    window = min(n_t, SAVE_WINDOW)
    new = jnp.concatenate([jnp.ones(1, bool), times[1:] != times[:-1]])
    n_distinct = jnp.sum(new)
    firsts = jnp.nonzero(new, size=n_t, fill_value=n_t - 1)[0]  # each distinct time's index
    distinct = times[firsts]  # non-decreasing (the padding repeats the last time)
    marks = distinct[window::window]  # where the save windows after the first begin
    t_first = jnp.minimum(times[0], ch.time[0])
    starts = jnp.concatenate([jnp.clip(ch.time, t_first, times[-1]), marks])
    which = jnp.concatenate([jnp.arange(ch.time.shape[0]), jnp.full(marks.shape[0], -1)])
    order = jnp.argsort(starts, stable=True)  # a record before a window mark at the same time
    bounds = jnp.concatenate([t_first[None], starts[order], times[-1:]])
    applies = jnp.concatenate([jnp.full(1, -1), which[order]])  # the record at each start
    slots = jnp.arange(window)

    def segment(carry, k):
        y, u, last_reset, out, code = carry
        c = record(jnp.maximum(applies[k], 0))
        # a record after the last save time changes nothing saved (clipped to that time, it
        # was applied before the last time was saved: a later dose showed there)
        due = (applies[k] >= 0) & (c["time"] <= times[-1])
        y, u, last_reset = apply_change(model, y, u, last_reset, c, due, y_init, y_ss)
        ta, tb = bounds[k], bounds[k + 1]
        pos = jnp.searchsorted(distinct, ta, side="left") + slots  # this piece's save times
        at = firsts[jnp.minimum(pos, n_t - 1)]
        t_at = times[at]
        ys, seg_code = integrate(y, u, ta, tb, jnp.clip(t_at, ta, tb))
        last = k == bounds.shape[0] - 2
        keep = (pos < n_distinct) & (t_at >= ta) & ((t_at < tb) | last)
        x = jnp.stack([ys[s][:-1] for s in names], axis=-1)
        out = out.at[jnp.where(keep, at, n_t)].set(x, mode="drop")
        y = {s: ys[s][-1] for s in names}
        return (y, u, last_reset, out, jnp.maximum(code, seg_code)), None

    out0 = jnp.full((n_t, len(names)), jnp.nan, dtype)
    init = (y_init, u_zero, jnp.asarray(-jnp.inf, dtype), out0, code0)
    (_, _, _, out, code), _ = jax.lax.scan(segment, init, jnp.arange(bounds.shape[0] - 1))
    out = out[jnp.searchsorted(times, times, side="left")]  # repeated times: the first's values
    return out, code
