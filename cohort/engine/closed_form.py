"""Exact solution of linear mammillary PK systems (the NONMEM ADVAN1-4/11-12 idea).

The system matrix of a 1-3 compartment model with an optional first-order depot is
diagonalised per patient; in modal coordinates each amplitude obeys ``a' = r a + w·u`` with a
closed-form solution, so the exact state is propagated from one change/save time to the next:
bolus doses add ``amount·w``, infusions enter through ``expm1(rΔ)/r``, and SS=1 doses set the
amplitudes to the geometric-series steady state at the record time. No ODE is solved. The
disposition matrix ``M·diag(1/V)`` is similar to the symmetric ``diag(V)^-1/2 · M ·
diag(V)^-1/2`` (equal flows both ways), so ``eigh`` applies — stable, real and supported on
GPU, unlike a general ``eig``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from cohort.engine.base import Engine, register_engine
from cohort.engine.events import (
    BOLUS,
    PAD,
    RATE,
    RESET,
    SS_BOLUS,
    SS_INFUSION,
    apply_due,
    interval_flags,
    resolve,
    with_sentinel,
)
from cohort.engine.linear import modes, phi
from cohort.engine.save_grid import block_any, padded_flags, padded_grid, scan_blocks
from cohort.engine.status import output_status
from cohort.models.base import Model, Tree


@register_engine("closed_form")
@dataclasses.dataclass(frozen=True)
class ClosedForm(Engine):
    """Exact solutions of linear PK (no settings): bolus, infusion, first-order absorption,
    lag times, any number of SS records."""

    name = "closed_form"
    default_chunk = 8_192

    def supports(self, model: Model) -> str | None:
        if supports(model):
            return None
        return (
            f"model {model.name!r} is not linear PK, so it has no closed form; use 'diffrax' "
            "(reference) or 'fast' (throughput)"
        )

    def describe(self, model: Model) -> dict:
        return {"engine": self.name, "solver": "exact modal solution"}

    def batch_solve(self, model, times, t_first, infusion, ss_interval, outputs, dtype):
        def solve(p, ev):
            out = solve_batch(
                model, p, ev, times, t_first, infusion, outputs, with_ss=ss_interval > 0
            )
            # padding rows repeat the last time: finite iff it is
            return out, output_status([out[o] for o in outputs], next(iter(p.values())).shape[0])

        return solve


def supports(model: Model) -> bool:
    """Whether ``model`` is purely linear PK (every state belongs to the linear system)."""
    lp = model.linear_pk
    if lp is None:
        return False
    pk_states = {lp.central, *lp.peripherals} | ({lp.depot} if lp.depot else set())
    return set(model.state_names) == pk_states


BLOCK = 8  # save intervals per iteration of the time loop (see solve_batch)


# Batched arrays are laid out mode-major, structure of arrays: rates ``r [M, N]``, amplitudes
# ``a [M, N]``, weights ``w [M, S, N]``, directions ``dirs [S, M, N]``; per-step work is then
# plain elementwise arithmetic (batched tiny einsums were 10x slower on CPU).


def _apply(change, due, a, u, last_reset, r, w, with_infusion: bool, with_ss: bool):
    """Apply one change record (per patient where ``due``) in modal coordinates. The static
    flags drop the infusion and steady-state algebra from batches that have no such records."""
    kind, cmt, t = change["kind"], change["cmt"], change["time"]
    wc = jnp.take_along_axis(w, cmt[None, None, :], axis=1)[:, 0, :]  # [M, N]
    is_reset = due & ((kind == RESET) | (kind == SS_BOLUS) | (kind == SS_INFUSION))
    a = jnp.where(is_reset, 0.0, a)
    u = jnp.where(is_reset, 0.0, u)
    last_reset = jnp.where(is_reset, t, last_reset)
    a = a + jnp.where(due & (kind == BOLUS), change["amount"], 0.0) * wc
    if with_infusion:
        take_rate = due & (kind == RATE) & (change["start"] >= last_reset)
        onehot = jax.nn.one_hot(cmt, u.shape[0], dtype=u.dtype, axis=0)  # [S, N]
        u = u + jnp.where(take_rate, change["rate"], 0.0) * onehot
    if with_ss:
        # Steady state at the record time: the geometric series of the implied doses every II,
        # the last of which entered II - lag ago (the record's own dose follows as a BOLUS or
        # RATE change when it enters; see events.resolve).
        ii, dur, lag = change["ii"], change["dur"], change["start"] - t
        denom = -jnp.expm1(r * ii)
        ss_bolus = change["amount"] * wc * jnp.exp(r * (ii - lag)) / denom
        a = jnp.where(due & (kind == SS_BOLUS), ss_bolus, a)
        if with_infusion:
            ss_inf = change["rate"] * wc * phi(r, dur) * jnp.exp(r * (ii - dur - lag)) / denom
            a = jnp.where(due & (kind == SS_INFUSION), ss_inf, a)
    return a, u, last_reset


def _propagate(a, u, r, w, dt, with_infusion):
    """Exact modal propagation over ``dt [N]`` with constant zero-order inputs ``u [S, N]``."""
    a = a * jnp.exp(r * dt)
    if with_infusion:
        a = a + jnp.sum(w * u[None], axis=1) * phi(r, dt)
    return a


def solve_batch(
    model: Model,
    p: Tree,
    ev: dict,
    times,
    t_first: float,
    with_infusion: bool,
    outputs: tuple[str, ...],
    with_ss: bool = True,
):
    """Exact outputs ``{name: [T', N]}`` for a batch (structure of arrays, ``p`` values
    ``[N]``); ``T' >= T = len(times)``, rows from ``T`` on are padding (callers drop them).

    One ``lax.scan`` over the save grid; inside an interval, patients whose change records fall
    in it are propagated exactly to each record and the record applied (a ``while_loop`` behind
    a scalar ``any`` predicate, skipped when no patient has a record in that interval). On a
    uniform grid, patients with no record after the first save time skip the scan: their
    outputs come from one fused pass over a table of powers (:func:`_one_segment`).
    """
    ch = jax.vmap(lambda e, q: resolve(model, e, q, with_infusion, with_ss))(ev, p)
    n = ch.time.shape[0]
    ch = with_sentinel(ch)
    p = model.prepare(p)  # e.g. 1/V for the concentration output
    # vmap of the per-patient routine (its scatters materialise the small matrices): a
    # stacked structure-of-arrays version was 2x faster but XLA then fused the eigenvalue
    # arithmetic differently in vector and scalar loops, so results moved by 1 ulp with the
    # batch size; results must not depend on the batch.
    # The decomposition in float64 wherever JAX has it, then rounded: in float32 ``eigh``'s
    # error is eps x the fastest rate, which made a slow rate (and the curve) wrong where the
    # rates are far apart (pk3_oral with Q/V2 = 1e6/h: 57 % off at 24 h, status ok; a
    # probe). The per-patient work is small; the stepping stays in the run's dtype.
    dtype = jnp.result_type(*jax.tree.leaves(p))
    fine = jnp.float64 if jax.config.jax_enable_x64 else dtype
    p_fine = jax.tree.map(lambda x: x.astype(fine), p)
    r, dirs, w = jax.vmap(lambda q: modes(model, q, dtype))(p_fine)  # [N,M], [N,S,M], [N,M,S]
    r, dirs, w = (x.astype(dtype) for x in (r, dirs, w))
    r, dirs, w = r.T, jnp.transpose(dirs, (1, 2, 0)), jnp.transpose(w, (1, 2, 0))
    names = model.state_names

    def advance(c, t_b, grid_step: bool = True):
        """Apply every record due by ``t_b`` (exactly at its time), then propagate to ``t_b``."""
        ptr0 = c[3]
        tc, a, u, ptr, last_reset = apply_due(
            ch,
            c,
            t_b,
            lambda t, a, u, dt: _propagate(a, u, r, w, dt, with_infusion),
            lambda change, due, a, u, lr: _apply(
                change, due, a, u, lr, r, w, with_infusion, with_ss
            ),
        )
        exact = _propagate(a, u, r, w, t_b - tc, with_infusion)
        if grid_step:
            # Patients without a record in this interval take the same plain step as in
            # `plain`, so results do not depend on which other patients share the batch.
            exact = jnp.where(ptr == ptr0, _plain_step(a, u, tc, t_b), exact)
        a = exact
        return jnp.broadcast_to(t_b, tc.shape).astype(tc.dtype), a, u, ptr, last_reset

    steps = np.diff(np.asarray(times, dtype=float))
    uniform = steps.size > 0 and np.allclose(steps, steps[0], rtol=0, atol=1e-12 * abs(steps[0]))
    # Exact one-step decay on a uniform grid: the plain steps use it when there are no
    # infusions, and the one-segment pass below builds its table of powers from it.
    step_decay = jnp.exp(r * jnp.asarray(steps[0], dtype)) if uniform else None
    decay = None if with_infusion else step_decay

    def _plain_step(a, u, t_a, t_b):
        if decay is not None:  # uniform grid, no infusions: the precomputed one-step decay
            return a * decay
        return _propagate(a, u, r, w, t_b - t_a, with_infusion)

    # A linear system's amounts with non-negative inputs are never negative: a negative one
    # is the modes' rounding (right after a depot dose the central amount, a sum of modes
    # cancelling to 0, came out -7e-18, or -5e-8 in float32, and broke log outputs; a probe)
    nonneg = [st.nonnegative for st in model.states]

    def observe(a):
        y = {s: sum(dirs[i, k] * a[k] for k in range(len(a))) for i, s in enumerate(names)}
        y = {s: jnp.maximum(v, 0.0) if nn else v for (s, v), nn in zip(y.items(), nonneg)}
        return {o: model.output(o, y, p).astype(dtype) for o in outputs}

    m = r.shape[0]
    t_first = min(float(t_first), float(times[0]))
    c = (
        jnp.full(n, t_first, dtype),
        jnp.zeros((m, n), dtype),
        jnp.zeros((len(names), n), dtype),
        jnp.zeros(n, jnp.int32),
        jnp.full(n, -jnp.inf, dtype),
    )
    c = advance(c, jnp.asarray(times[0], dtype), grid_step=False)
    # Save points go in blocks of BLOCK (the last block padded with repeats of the last
    # time): a block in which no patient has a record is BLOCK plain steps in one
    # straight-line body that XLA fuses into one pass over the patients (amplitudes stay in
    # registers between steps instead of going through memory after each: 1.7-2.3x faster
    # measured on CPU). Point 0 is observed in block 0, so the scan writes every output in
    # place (no concatenation: a copy of the whole result).
    n_pts = len(times)
    padded, n_blocks = padded_grid(times, n_pts, BLOCK)
    tgrid = jnp.asarray(padded, dtype)
    has_event = interval_flags(ch.time, tgrid[:n_pts])  # [n_pts - 1]: interval q-1 -> point q
    has_event = padded_flags(has_event, n_blocks * BLOCK)
    point_event = jnp.concatenate([jnp.ones(1, bool), has_event[:-1]])  # point 0 is special
    block_event = block_any(point_event, n_blocks, BLOCK)

    def step(c, q):
        """Observe point ``q`` after advancing through interval ``q - 1`` (none for q = 0)."""

        def interval(c):
            t_b = tgrid[q]

            def plain(c):
                tc, a, u, ptr, last_reset = c
                a = _plain_step(a, u, tc, t_b)
                return jnp.broadcast_to(t_b, tc.shape), a, u, ptr, last_reset

            return jax.lax.cond(has_event[q - 1], lambda c: advance(c, t_b), plain, c)

        c = jax.lax.cond(q == 0, lambda c: c, interval, c)
        return c, observe(c[1])

    def plain_block(c, b):
        tc, a, u, ptr, last_reset = c
        outs = []
        for j in range(BLOCK):
            q = b * BLOCK + j
            a = _plain_step(a, u, tgrid[q - 1], tgrid[q])
            outs.append(observe(a))
        t_end = jnp.broadcast_to(tgrid[(b + 1) * BLOCK - 1], tc.shape)
        stacked = {o: jnp.stack([x[o] for x in outs]) for o in outputs}
        return (t_end, a, u, ptr, last_reset), stacked

    def eventful_block(c, b):
        return jax.lax.scan(step, c, b * BLOCK + jnp.arange(BLOCK))

    def stepped(c):
        return scan_blocks(c, block_event, plain_block, eventful_block, BLOCK)[1]

    if not uniform:
        # Padded rows stay: slicing here would copy the whole result; callers take [:T].
        return stepped(c)
    # One dosing segment: a patient with no record after the first save time (e.g. a single
    # dose, or every dose before the observation window) has amplitudes a(t_q) = a_0·d^q on
    # the uniform grid. That is computed as one elementwise pass over a table of powers
    # instead of a time loop; a batch in which every patient qualifies skips the loop. The
    # choice is per patient, so a patient's result does not depend on its batch.
    single = jnp.all((ch.kind == PAD) | (ch.time <= tgrid[0]), axis=1) & jnp.all(c[2] == 0, 0)

    def segment(c):
        return _one_segment(c[1], step_decay, n_blocks * BLOCK, observe)

    def mixed(c):
        seg = segment(c)
        return {o: jnp.where(single, seg[o], v) for o, v in stepped(c).items()}

    return jax.lax.cond(jnp.all(single), segment, mixed, c)


def _powers(x, k: int):
    """``[x**0, ..., x**(k-1)]`` stacked on a new leading axis, by repeated multiplication
    (relative rounding error ~ k·eps, no ``exp``/``pow`` per entry). Unrolled: ``k`` is
    about √T, and a ``scan`` here costs more in loop overhead than the multiplications."""
    out = [jnp.ones_like(x)]
    for _ in range(k - 1):
        out.append(out[-1] * x)
    return jnp.stack(out)


def _one_segment(a0, d, n_rows: int, observe) -> dict:
    """Outputs at ``t_0 + q·step`` (``q < n_rows``) of amplitudes ``a0 [M, N]`` decaying
    freely by ``d = exp(r·step) [M, N]`` per step: ``d^q = (d^K)^hi · d^lo`` with
    ``q = hi·K + lo`` from two small tables (``K`` ≈ √n_rows), so every output row is the
    same few multiply-adds per patient and XLA emits the whole result as one fused pass
    (measured 2x faster than the time loop, which writes each row through a scan carry)."""
    k = math.isqrt(max(n_rows - 1, 0)) + 1  # ceil(sqrt(n_rows)) for n_rows >= 1
    n_hi = -(-n_rows // k)
    low = _powers(d, k)  # [K, M, N]
    high = a0[None] * _powers(low[-1] * d, n_hi)  # [n_hi, M, N]
    # One [n_hi, K, N] array per mode (not one stacked array, whose transposed indexing XLA
    # emits as scalar code): the fused pass is then plain vector multiply-adds along N.
    out = observe([high[:, m][:, None] * low[:, m][None] for m in range(d.shape[0])])
    return {o: v.reshape((n_hi * k, *v.shape[2:]))[:n_rows] for o, v in out.items()}
