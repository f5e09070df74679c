"""Throughput path: fixed-step RK4 over structure-of-arrays states, one ``lax.scan`` in time.

Each named state is one ``[N]`` array, so a step is a handful of fused elementwise kernels over
the whole cohort (DESIGN §5: this, not ``vmap`` of an adaptive solver, is what scales). The step
between two save times is split into equal substeps no longer than ``dt``. Doses need not lie on
the grid: a substep that contains a patient's change record is split exactly at it (a
``while_loop`` whose predicate is a scalar ``any`` over the batch, so it costs nothing when no
patient has an event in that substep). Diffrax has no batched fixed-step stepper with
per-patient event splitting, hence this hand-written RK4; its error versus the adaptive diffrax
reference is measured in tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from cohort.engine.base import Engine, one_ss_record_per_patient, register_engine
from cohort.engine.common import apply_change, first_ss_index, track_extremes
from cohort.engine.events import (
    SS_INFUSION,
    Changes,
    apply_due,
    interval_flags,
    resolve,
    take,
    with_sentinel,
)
from cohort.engine.inputs import InputError
from cohort.engine.save_grid import block_any, padded_flags, padded_grid, scan_blocks
from cohort.engine.status import Status, stepping_status
from cohort.engine.steady_state import iterate_to_steady_state
from cohort.engine.stepping import rk4_step
from cohort.models.base import Model, Tree


@register_engine("fast", "rk4")
@dataclasses.dataclass(frozen=True)
class RK4(Engine):
    """Fixed-step RK4 over structure-of-arrays states (throughput).

    ``dt``: the step in model time units (``None``: the model's ``fast_dt``). Or ``tol``: the
    accuracy wanted instead of a step — the largest error of any saved output relative to
    that output's peak for the patient; the step is then chosen from it before the run (step
    doubling on a pilot of the cohort's first patients, see :func:`choose_step`). Save
    intervals longer than the step are split into equal substeps; on a uniform save grid a
    step spanning several save intervals takes one step across them where no patient has a
    record, with outputs in between from cubic Hermite dense output (also fourth order)."""

    dt: float | None = None
    tol: float | None = None
    ss_max_cycles: int = 1000
    ss_rtol: float = 1e-10
    name = "fast"
    default_chunk = 16_384

    def describe(self, model: Model) -> dict:
        out = {"engine": self.name, "solver": "RK4 (fixed step, structure of arrays)"}
        out["dt"] = self.step(model)
        if self.tol is not None:
            out["tol"] = self.tol
        return out

    def step(self, model: Model) -> float:
        dt = model.fast_dt if self.dt is None else self.dt
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"RK4.dt must be > 0 and finite, got {dt}")
        return float(dt)

    def validate(self, model, table, params) -> None:
        super().validate(model, table, params)
        if self.tol is not None and not 0 < self.tol < 1:
            raise InputError(f"options: RK4.tol must be in (0, 1), got {self.tol}")
        try:
            self.step(model)
        except ValueError as exc:
            raise InputError(f"options: {exc}") from None
        one_ss_record_per_patient(table, "fast")

    def batch_solve(self, model, times, t_first, infusion, ss_interval, outputs, dtype):
        def solve(p, ev):
            out, finite, min_scaled, ss_code, unstable = solve_batch(
                model, p, ev, times, t_first, infusion, ss_interval, self, outputs
            )
            status = stepping_status(finite, min_scaled, [out[o] for o in outputs])
            status = jnp.where(status == Status.OK, ss_code, status)
            return out, jnp.where(unstable, Status.STEP_UNSTABLE, status)

        return solve


FastOptions = RK4  # the earlier name of the fast path's settings


def _rhs(model: Model, t, y: Tree, p: Tree, u: Tree | None) -> Tree:
    # Without infusions the input rates are all zero: pass Python zeros, which XLA folds away
    # (an [N] array of zeros per state would be read at every one of the 4 stages).
    return model.rhs(t, y, p, dict.fromkeys(y, 0.0) if u is None else u)


def _rk4_step(
    model: Model, t, y: Tree, p: Tree, u: Tree | None, h, k1: Tree | None = None
) -> tuple[Tree, Tree]:
    """One classical RK4 step; returns the new state and the slope at the start (``k1``,
    computed unless given)."""
    return rk4_step(lambda tt, yy: _rhs(model, tt, yy, p, u), t, y, h, k1)


def _rk4(model: Model, t, y: Tree, p: Tree, u: Tree | None, h) -> Tree:
    return _rk4_step(model, t, y, p, u, h)[0]


STABILITY_STEPS = 4  # RK4 steps between two readings of the fastest rate during a run
RK4_STABILITY = 2.78
"""Where classical RK4's stability region meets the negative real axis (|R(z)| = 1 at z =
-2.785; on the imaginary axis at 2.83): a decaying mode with rate·dt beyond it grows."""


def _jv(model: Model, t, y: Tree, p: Tree, v: Tree) -> Tree:
    return jax.jvp(lambda yy: _rhs(model, t, yy, p, None), (y,), (v,))[1]


def _norm(v: Tree):
    return jnp.sqrt(sum(x * x for x in v.values()))


def _unit(v: Tree) -> Tree:
    size = _norm(v)
    return {s: x / jnp.where(size > 0, size, 1.0) for s, x in v.items()}


def _fastest_rate(model: Model, t, y: Tree, p: Tree, iterations: int = 24):
    """Per patient, an estimate of the spectral radius of the RHS Jacobian at state ``y``
    (``[N]``) and the unit vector it was read along: power iteration with Jacobian-vector
    products, the radius read over two products so that a complex pair converges too. A
    handful of RHS evaluations, against the thousands of a run; the Jacobian itself (S x S
    per patient) is never formed."""
    # a fixed start with a component along every state (ones alone can miss a mode)
    v = _unit({s: jnp.full_like(y[s], 1.0 + 0.37 * k) for k, s in enumerate(y)})
    v = jax.lax.fori_loop(0, iterations, lambda _, v: _unit(_jv(model, t, y, p, v)), v)
    return jnp.sqrt(_norm(_jv(model, t, y, p, _jv(model, t, y, p, v)))), v


def _rate_along(model: Model, t, y: Tree, p: Tree, v: Tree):
    """Two warm-started power iterations at ``y``: the rate ``|J² v|^½`` and the next vector.
    Carried through the run from the vector at rest, it follows the fastest mode as the
    Jacobian moves with the state (a model stiff only while drug is present: IDR IV at
    SMAX 100 has a rate of 76/h at its peak and 1/h at rest and at the end)."""
    # read over two products, as at rest: one |J v| is bounded by J's largest singular
    # value, not its spectral radius (a damped oscillation with one state in other units
    # read 60/h for |λ| = 6/h and was flagged)
    w = _jv(model, t, y, p, _jv(model, t, y, p, v))
    size = _norm(w)
    keep = size > 0
    return jnp.sqrt(size), {s: jnp.where(keep, w[s] / jnp.where(keep, size, 1.0), v[s]) for s in v}


def _hermite(y0: Tree, f0: Tree, y1: Tree, f1: Tree, h, theta) -> Tree:
    """Cubic Hermite dense output at ``t0 + theta·h`` from both ends' states and slopes
    (fourth-order accurate like the step itself)."""
    th2 = theta * theta
    h00 = (1.0 + 2.0 * theta) * (1.0 - theta) ** 2
    h10 = theta * (1.0 - theta) ** 2 * h
    h01 = th2 * (3.0 - 2.0 * theta)
    h11 = th2 * (theta - 1.0) * h
    return {s: h00 * y0[s] + h10 * f0[s] + h01 * y1[s] + h11 * f1[s] for s in y0}


def save_intervals_per_step(times: np.ndarray, dt: float) -> int:
    """How many save intervals one RK4 step spans: ``floor(dt / spacing)`` on a uniform save
    grid (outputs in between come from Hermite dense output), else 1."""
    steps = np.diff(np.asarray(times, dtype=float))
    if steps.size == 0 or not np.allclose(steps, steps[0], rtol=0, atol=1e-9 * abs(steps[0])):
        return 1
    return max(1, min(int(math.floor(dt / steps[0] + 1e-9)), steps.size))


def _substep(model, p, ch, y_init, y_ss, carry, t_b, with_infusion: bool = True):
    """Advance every patient to ``t_b``, stopping at (and applying) each change on the way."""

    c = apply_due(
        ch,
        carry,
        t_b,
        lambda t, y, u, dt: _rk4(model, t, y, p, u if with_infusion else None, dt),
        lambda change, due, y, u, lr: apply_change(model, y, u, lr, change, due, y_init, y_ss),
    )
    tc, y, u, ptr, last_reset = c
    y = _rk4(model, tc, y, p, u if with_infusion else None, t_b - tc)
    return jnp.broadcast_to(t_b, tc.shape).astype(tc.dtype), y, u, ptr, last_reset


def _sub_end(t_a, t_b, n_sub: int, k):
    """End time of substep ``k`` of ``n_sub`` equal substeps of ``[t_a, t_b]`` (exactly ``t_b``
    for the last one, so intervals chain without rounding drift). Both the plain and the
    event-splitting path use it, which keeps results bit-identical across batch compositions.

    Counted back from ``t_b``, the last end is ``t_b - 0·h``: exact in any rounding. The
    former ``where(k + 1 == n_sub, t_b, t_a + (k + 1)·h)`` was folded away by LLVM on CPU
    (the two branches compare equal when folded without FMA, and the kept one then runs with
    FMA): from -6 to 0 in 72 steps the lead ended at -3.3e-16, and a dose at the first save
    time was applied in the next interval with a backward step (a probe's case)."""
    return t_b - (n_sub - 1 - k) * ((t_b - t_a) / n_sub)


def _advance(model, p, ch, y_init, y_ss, carry, t_a, t_b, n_sub: int, with_infusion=True):
    def sub(k, c):
        return _substep(model, p, ch, y_init, y_ss, c, _sub_end(t_a, t_b, n_sub, k), with_infusion)

    return jax.lax.fori_loop(0, n_sub, sub, carry)


def _steady_state(model, p, ch, y_init, n_sub, opts: RK4):
    """State at the first SS record's time and a status code per patient: the fixed point of
    one dosing interval (the dose entering after its lag)."""
    n = ch.time.shape[0]
    k_ss, has_ss = first_ss_index(ch.kind)
    c = {f: jnp.take_along_axis(getattr(ch, f), k_ss[:, None], 1)[:, 0] for f in ch._fields}
    c["ii"] = jnp.where(has_ss, c["ii"], 1.0)  # a nominal interval for patients without SS
    c["amount"] = jnp.where(has_ss, c["amount"], 0.0)
    c["rate"] = jnp.where(has_ss, c["rate"], 0.0)
    infusion = c["kind"] == SS_INFUSION
    dur = jnp.where(infusion, c["dur"], 0.0)
    lag = jnp.where(has_ss, c["start"] - c["time"], 0.0)
    zero = jnp.zeros_like(c["ii"])
    inf = jnp.full_like(zero, jnp.inf)
    # One interval from the record time as change records: dose (or infusion start) at the
    # lag, infusion end at lag + dur.
    cyc = Changes(
        time=jnp.stack([lag, jnp.where(infusion, lag + dur, inf), inf], 1),
        kind=jnp.stack([jnp.where(infusion, 2, 1), jnp.where(infusion, 2, 0), 0 * c["kind"]], 1),
        cmt=jnp.stack([c["cmt"]] * 3, 1),
        amount=jnp.stack([jnp.where(infusion, 0.0, c["amount"]), zero, zero], 1),
        rate=jnp.stack([jnp.where(infusion, c["rate"], 0.0), -c["rate"], zero], 1),
        start=jnp.stack([zero, zero, zero], 1),
        ii=jnp.stack([c["ii"]] * 3, 1),
        dur=jnp.stack([dur] * 3, 1),
    )
    names = model.state_names
    dtype = c["ii"].dtype

    def cycle(y):
        u = {s: jnp.zeros(n, dtype) for s in names}
        carry = (zero, y, u, jnp.zeros(n, jnp.int32), jnp.full(n, -jnp.inf, dtype))
        carry = _substep(model, p, cyc, y_init, None, carry, zero)  # apply the dose at 0
        return _advance(model, p, cyc, y_init, None, carry, zero, c["ii"], n_sub)[1]

    return iterate_to_steady_state(
        lambda y: (cycle(y), Status.OK),
        y_init,
        has_ss,
        max_cycles=opts.ss_max_cycles,
        rtol=opts.ss_rtol,
        floor=1e-12,
    )


def solve_batch(
    model: Model,
    p: Tree,
    ev: dict,
    times: np.ndarray,
    t_first: float,
    with_infusion: bool,
    ss_interval: float,
    opts: RK4,
    outputs: tuple[str, ...],
):
    """Outputs ``{name: [T, N]}`` and per-patient health flags for a batch (``p`` values ``[N]``).

    ``times`` is a concrete increasing grid, ``t_first`` the earliest record time (if before
    ``times[0]``) and ``ss_interval`` the largest SS dosing interval in the batch (0 if none);
    all are static so substep counts are Python ints derived from the step ``dt``.
    Returns ``(outputs, finite, min_scaled, ss_code)`` where ``finite`` says every state stayed
    finite, ``min_scaled`` is the most negative value of a non-negative state relative to the
    largest state magnitude and ``ss_code`` the steady-state search's status per patient.
    """
    times = np.asarray(times, dtype=float)
    p = model.prepare(p)  # parameter-only terms once, not at every RHS evaluation
    dt = opts.step(model)
    n_sub = max(1, math.ceil(float(np.max(np.diff(times), initial=0.0)) / dt - 1e-9))
    ch = jax.vmap(lambda e, q: resolve(model, e, q, with_infusion, ss_interval > 0))(ev, p)
    n = ch.time.shape[0]
    ch = with_sentinel(ch)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(p))
    names = model.state_names
    y_init = model.initial(p)
    y_ss, ss_code = None, jnp.zeros(n, jnp.int32)
    if ss_interval > 0:
        n_ss = max(1, math.ceil(ss_interval / dt - 1e-9))
        y_ss, ss_code = _steady_state(model, p, ch, y_init, n_ss, opts)
    t_first = min(float(t_first), float(times[0]))
    carry = (
        jnp.full(n, t_first, dtype),
        y_init,
        {s: jnp.zeros(n, dtype) for s in names},
        jnp.zeros(n, jnp.int32),
        jnp.full(n, -jnp.inf, dtype),
    )
    # Records before the first save time: integrate up to it in steps of at most dt.
    n_lead = max(1, math.ceil((times[0] - t_first) / dt - 1e-9))
    carry = _advance(
        model, p, ch, y_init, y_ss, carry, t_first, float(times[0]), n_lead, with_infusion
    )
    tgrid = jnp.asarray(times, dtype)

    def observe(y):
        return {o: model.output(o, y, p).astype(dtype) for o in outputs}

    has_event = interval_flags(ch.time, tgrid)

    def plain(c, i):
        """No change record in this interval for anyone: ``n_sub`` bare RK4 steps."""
        tc, y, u, ptr, last_reset = c

        def sub(k, state):
            t, y = state
            t_next = jnp.broadcast_to(_sub_end(tgrid[i], tgrid[i + 1], n_sub, k), t.shape)
            return t_next, _rk4(model, t, y, p, u if with_infusion else None, t_next - t)

        tc, y = jax.lax.fori_loop(0, n_sub, sub, (tc, y)) if n_sub > 1 else sub(0, (tc, y))
        return tc, y, u, ptr, last_reset

    def eventful(c, i):
        return _advance(model, p, ch, y_init, y_ss, c, tgrid[i], tgrid[i + 1], n_sub, with_infusion)

    nonneg = {st.name for st in model.states if st.nonnegative}

    def extremes(lo, hi, y):
        return track_extremes(lo, hi, y, names, nonneg)

    def interval(c, i):
        c, (lo, hi) = c
        c = jax.lax.cond(has_event[i], eventful, plain, c, i)
        return (c, extremes(lo, hi, c[1])), observe(c[1])

    lo, hi = extremes(jnp.zeros(n, dtype), jnp.zeros(n, dtype), carry[1])
    first = observe(carry[1])
    n_int = len(times) - 1
    m = save_intervals_per_step(times, dt)
    # A step beyond RK4's stability returns garbage flagged ok (k = 2/h, dt = 2: x5 per
    # step). The fastest rate is read at rest (24 power iterations) and then followed through
    # the run with one warm-started iteration every ``stride`` save intervals (blocks of m),
    # so that a model stiff only mid-run is caught too. One iteration costs ~2.5 RHS
    # evaluations against 4 per step: every interval cost 35 % of the run at one step per
    # save (pk2_oral_idr, 5-min saves), every 4th ~9 %.
    rest_rate, v0 = _fastest_rate(model, jnp.asarray(times[0], dtype), y_init, p)
    stride = max(1, STABILITY_STEPS // (n_sub if m == 1 else 1))

    def tracked(step, time_of):
        def run(c, k):
            inner, (v, top) = c
            inner, out = step(inner, k)

            def look(v, top):
                rate, v = _rate_along(model, time_of(k), inner[0][1], p, v)
                return v, jnp.fmax(top, rate)  # NaN rates (an overflowed state) skipped

            v, top = jax.lax.cond(k % stride == stride - 1, look, lambda v, t: (v, t), v, top)
            return (inner, (v, top)), out

        return run

    stab = (v0, rest_rate)
    if n_int == 0:  # a single save time: nothing to step past it
        top, h_step, rest = rest_rate, dt, {o: first[o][None][:0] for o in outputs}
    elif m == 1:
        h_step = float(np.max(np.diff(times), initial=dt)) / n_sub  # the longest step taken
        ((carry, (lo, hi)), (_, top)), rest = jax.lax.scan(
            tracked(interval, lambda i: tgrid[i + 1]), ((carry, (lo, hi)), stab),
            jnp.arange(n_int),
        )  # fmt: skip
    else:
        # dt spans m save intervals: where no patient has a record in a block of m intervals,
        # one RK4 step covers the block and the saves inside it come from Hermite dense
        # output (4 + 1 RHS evaluations instead of 4·m); blocks with a record step interval
        # by interval as above. The last block is padded with empty intervals.
        padded, n_blocks = padded_grid(times, n_int, m)
        starts, ends = padded[:-1:m], padded[m::m]
        h_step = float(np.max(ends - starts))
        theta = (padded[1:].reshape(n_blocks, m) - starts[:, None]) / (ends - starts)[:, None]
        theta_j, h_j = jnp.asarray(theta, dtype), jnp.asarray(ends - starts, dtype)
        tgrid = jnp.asarray(padded, dtype)
        has_event = padded_flags(has_event, n_blocks * m)
        block_event = block_any(has_event, n_blocks, m)

        def plain_block(c, b):
            (tc, y0, u, ptr, last_reset), (lo, hi), (f_prev, reuse) = c
            uu, h = (u if with_infusion else None), h_j[b]
            # The slope at the block start is the previous plain block's end slope (first
            # same as last: 4 RHS evaluations per block instead of 5) unless a block with
            # records came in between (``reuse`` is one flag for the batch).
            f0 = jax.lax.cond(reuse, lambda: f_prev, lambda: _rhs(model, tc, y0, p, uu))
            y1, _ = _rk4_step(model, tc, y0, p, uu, h, k1=f0)
            f1 = _rhs(model, tc + h, y1, p, uu)
            outs = []
            for j in range(m):
                yj = y1 if j == m - 1 else _hermite(y0, f0, y1, f1, h, theta_j[b, j])
                lo, hi = extremes(lo, hi, yj)
                outs.append(observe(yj))
            t_end = jnp.broadcast_to(tgrid[(b + 1) * m], tc.shape)
            stacked = {o: jnp.stack([x[o] for x in outs]) for o in outputs}
            return ((t_end, y1, u, ptr, last_reset), (lo, hi), (f1, jnp.array(True))), stacked

        def eventful_block(c, b):
            # Patients with a record in the block step interval by interval; the others take
            # the same dense step as in a plain block, so nobody's result depends on who else
            # shares the batch.
            own = take(ch, c[0][3])["time"] <= tgrid[(b + 1) * m]
            fine_c, fine = jax.lax.scan(interval, c[:2], b * m + jnp.arange(m))
            dense_c, dense = plain_block(c, b)

            def pick(x_fine, x_dense):
                return jnp.where(own, x_fine, x_dense)

            picked = jax.tree_util.tree_map(pick, fine_c, dense_c[:2])
            no_reuse = (dense_c[2][0], jnp.array(False))
            return (*picked, no_reuse), jax.tree_util.tree_map(pick, fine, dense)

        slope = ({k: jnp.zeros_like(v) for k, v in carry[1].items()}, jnp.array(False))

        def block_end(b):
            return tgrid[(b + 1) * m]

        ((carry, (lo, hi), _), (_, top)), rest = scan_blocks(
            ((carry, (lo, hi), slope), stab), block_event,
            tracked(plain_block, block_end), tracked(eventful_block, block_end), m,
        )  # fmt: skip
        rest = {o: v[:n_int] for o, v in rest.items()}
    out = {o: jnp.concatenate([first[o][None], rest[o]]) for o in outputs}
    # NaN propagates through the states (and through min/max), so final checks suffice.
    finite = jnp.isfinite(lo) & jnp.isfinite(hi)
    for s in names:
        finite = finite & jnp.isfinite(carry[1][s])
    # the largest rate read before any overflow: a run that blew up because of it is
    # step_unstable (the cause), not just nonfinite
    h = min(h_step, dt)
    unstable = top * h > RK4_STABILITY
    return out, finite, lo / jnp.maximum(hi, 1e-30), ss_code, unstable
