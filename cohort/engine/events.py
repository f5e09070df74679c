"""Resolve dosing records against a patient's parameters into time-ordered state changes.

Bioavailability, lag times and modelled infusion durations depend on parameters, so this runs
inside JAX (per patient, ``vmap``-able). Every engine consumes the same change list, which is
what makes their results comparable.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cohort.models.base import Model, Tree

PAD, BOLUS, RATE, RESET, SS_BOLUS, SS_INFUSION = 0, 1, 2, 3, 4, 5


class Changes(NamedTuple):
    """Time-sorted state changes of one patient (arrays of equal length ``R``).

    ``kind``: PAD, BOLUS (add ``amount`` to ``cmt``), RATE (add ``rate`` to the zero-order input
    of ``cmt`` if the infusion began at ``start`` >= the last reset), RESET (state to baseline,
    infusions off), SS_BOLUS / SS_INFUSION (reset then steady state of doses every ``ii``).
    """

    time: jnp.ndarray
    kind: jnp.ndarray
    cmt: jnp.ndarray
    amount: jnp.ndarray
    rate: jnp.ndarray
    start: jnp.ndarray
    ii: jnp.ndarray
    dur: jnp.ndarray


def _per_cmt(model: Model, mapping: dict[str, str], cmt, p: Tree, default: float, what: str):
    """Value of the per-compartment parameter (F, ALAG, D_<cmt>) for each record's ``cmt``."""
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(p))  # p may hold prepared subtrees
    out = jnp.full(cmt.shape, default, dtype=dtype)
    for i, name in enumerate(model.state_names):
        pname = mapping.get(name)
        if pname is None:
            continue
        out = jnp.where(cmt == i, p[pname], out)
    return out


def resolve(model: Model, ev: dict, p: Tree, with_infusion: bool, with_ss: bool = True) -> Changes:
    """Turn one patient's padded records ``ev`` (arrays ``[E]``) into sorted :class:`Changes`.

    A dose enters at its time plus the lag of its compartment. An SS=1 dose becomes two
    changes, as in NONMEM: at the record's own time the state is reset to the steady state of
    the implied earlier doses (each lagged like this one; ``start`` holds when this dose
    enters, so the lag is ``start - time``), and the dose itself enters after its lag like any
    other. Changes at equal times keep this order: steady state first, then the records.
    ``with_ss=False`` (no SS=1 record in the batch) leaves the steady-state changes out.
    """
    dose = ev["evid"] == 1
    f = _per_cmt(model, model.bioavailability, ev["cmt"], p, 1.0, "F")
    lag = _per_cmt(model, model.lag, ev["cmt"], p, 0.0, "ALAG")
    t = jnp.where(dose, ev["time"] + lag, ev["time"])
    amount = f * ev["amt"]
    is_ss = dose & ev["ss"]
    kind = jnp.where(ev["evid"] == 3, RESET, PAD)
    zeros = jnp.zeros_like(t)
    ss_time = jnp.where(is_ss, ev["time"], jnp.inf)
    if not with_infusion:
        kind = jnp.where(dose, BOLUS, kind)
        steady = Changes(
            ss_time, jnp.where(is_ss, SS_BOLUS, PAD), ev["cmt"], amount, zeros, t, ev["ii"], zeros
        )
        ch = Changes(t, kind, ev["cmt"], amount, zeros, t, ev["ii"], zeros)
        both = Changes(*(jnp.concatenate([a, b]) for a, b in zip(steady, ch))) if with_ss else ch
        order = jnp.argsort(both.time, stable=True)
        return Changes(*(a[order] for a in both))
    dur_param = {s: model.duration.get(s, f"D_{s}") for s in model.state_names}
    dur_param = {s: n for s, n in dur_param.items() if n in p}
    modelled = _per_cmt(model, dur_param, ev["cmt"], p, jnp.nan, "D")
    infusion = dose & (ev["rate"] != 0)
    # NONMEM: with a given RATE, F scales the duration; with RATE=-2, F scales the rate.
    dur = jnp.where(ev["rate"] > 0, amount / jnp.where(ev["rate"] > 0, ev["rate"], 1.0), modelled)
    rate = jnp.where(ev["rate"] > 0, ev["rate"], amount / jnp.where(dur > 0, dur, 1.0))
    kind = jnp.where(dose, jnp.where(infusion, RATE, BOLUS), kind)
    rate = jnp.where(infusion, rate, 0.0)
    dur = jnp.where(infusion, dur, 0.0)
    steady = Changes(
        ss_time,
        jnp.where(is_ss, jnp.where(infusion, SS_INFUSION, SS_BOLUS), PAD),
        ev["cmt"],
        jnp.where(infusion, 0.0, amount),
        rate,
        t,
        ev["ii"],
        dur,
    )
    end_kind = jnp.where(infusion, RATE, PAD)
    end_t = jnp.where(infusion, t + dur, jnp.inf)
    every = Changes(
        jnp.concatenate([ss_time, t, end_t]),
        jnp.concatenate([steady.kind, kind, end_kind]),
        jnp.concatenate([ev["cmt"]] * 3),
        jnp.concatenate([steady.amount, jnp.where(infusion, 0.0, amount), zeros]),
        jnp.concatenate([rate, rate, -rate]),
        jnp.concatenate([t, t, t]),
        jnp.concatenate([ev["ii"]] * 3),
        jnp.concatenate([dur, dur, dur]),
    )
    if not with_ss:
        every = Changes(*(a[ev["time"].shape[0] :] for a in every))
    order = jnp.argsort(every.time, stable=True)
    return _cancel_reset_infusions(Changes(*(a[order] for a in every)), order, with_ss)


def _cancel_reset_infusions(s: Changes, order, with_ss: bool) -> Changes:
    """Infusions that start at the time of a reset (or steady state) ordered after them are
    reset away, as a bolus given then is: their start and their end both change nothing.
    The end alone still ran (its start was not before the reset) and left a negative rate
    behind: every later dose of the patient vanished, or the solve failed (a probe)."""
    n = s.time.shape[0]
    idx = jnp.arange(n)
    resets = (s.kind == RESET) | (s.kind == SS_BOLUS) | (s.kind == SS_INFUSION)
    nxt = jnp.flip(jax.lax.cummin(jnp.flip(jnp.where(resets, idx, n))))  # next reset at/after
    nxt_time = jnp.where(nxt < n, s.time[jnp.minimum(nxt, n - 1)], jnp.inf)
    cancelled = (s.kind == RATE) & (s.rate > 0) & (nxt_time == s.time)
    # to the unsorted layout [steady?, starts, ends]: a start's end sits one block later
    e = n // 3 if with_ss else n // 2
    first = e if with_ss else 0
    flat = jnp.zeros(n, bool).at[order].set(cancelled)[first : first + e]
    stop = (
        jnp.zeros(n, bool).at[first : first + e].set(flat).at[first + e : first + 2 * e].set(flat)
    )
    return s._replace(rate=jnp.where(stop[order], 0.0, s.rate))


def ss_lag_problem(model: Model, table, params: dict) -> str | None:
    """Why an SS=1 dose cannot be resolved (its lag, plus its infusion time, reaches past the
    dosing interval: implied doses would still be pending at the record time), or None."""
    import numpy as np

    def value(name, i, default):
        return float(params[name][i]) if name in params else default

    rows = np.argwhere((table.evid == 1) & table.ss)
    for i, j in rows:
        cmt = model.state_names[int(table.cmt[i, j])]
        lag = value(model.lag.get(cmt), i, 0.0)
        dur = 0.0
        if table.rate[i, j] > 0:
            dur = value(model.bioavailability.get(cmt), i, 1.0) * table.amt[i, j] / table.rate[i, j]
        elif table.rate[i, j] == -2:
            dur = value(model.duration.get(cmt, f"D_{cmt}"), i, 0.0)
        if lag > 0 and lag + dur >= table.ii[i, j]:
            return (
                f"dosing: patient index {i}, SS=1 dose at time {table.time[i, j]:g}: its lag "
                f"{lag:g}{f' plus infusion time {dur:g}' if dur else ''} reaches the dosing "
                f"interval II={table.ii[i, j]:g}; steady state with pending lagged doses is not "
                "supported (shorten the lag or give the doses without SS=1)"
            )
    return None


def missing_duration_params(model: Model, table) -> list[str]:
    """Names of ``D_<cmt>`` parameters that RATE=-2 records need (checked before solving)."""
    import numpy as np

    need = set()
    mask = (table.evid == 1) & (table.rate == -2)
    for c in np.unique(table.cmt[mask]):
        s = model.state_names[int(c)]
        need.add(model.duration.get(s, f"D_{s}"))
    return sorted(need)


def bad_durations(model: Model, table, params: dict):
    """Per patient: a RATE=-2 dose whose modelled duration (``D_<cmt>``) is not a finite
    number > 0 (given over no time or negative time, the dose would vanish or turn negative),
    or, at SS=1, longer than II (overlapping infusions at steady state are not supported, as
    for a given RATE; they came out wrong with status ok, a probe)."""
    import numpy as np

    bad = np.zeros(table.n_patients, bool)
    modelled = (table.evid == 1) & (table.rate == -2)
    for c in np.unique(table.cmt[modelled]):
        s = model.state_names[int(c)]
        name = model.duration.get(s, f"D_{s}")
        if name not in params:
            continue  # refused before: missing_duration_params
        d = np.broadcast_to(np.asarray(params[name], float), (table.n_patients,))
        here = modelled & (table.cmt == c)
        bad |= np.any(here, axis=1) & ~(np.isfinite(d) & (d > 0))
        bad |= np.any(here & table.ss & (d[:, None] > table.ii), axis=1)
    return bad


def with_sentinel(ch: Changes) -> Changes:
    """Append a padding record (time +inf) to batched changes ``[N, R]``, so a per-patient
    pointer to the next record always has somewhere to stop."""
    n = ch.time.shape[0]
    return Changes(
        *(
            jnp.concatenate([a, jnp.full((n, 1), jnp.inf if f == "time" else 0, a.dtype)], 1)
            for f, a in zip(ch._fields, ch)
        )
    )


def take(ch: Changes, ptr) -> dict:
    """Each patient's record at its pointer ``ptr [N]`` from batched changes ``[N, R]``."""
    return {f: jnp.take_along_axis(getattr(ch, f), ptr[:, None], axis=1)[:, 0] for f in ch._fields}


def interval_flags(change_time, tgrid):
    """``flags[i]``: some patient has a change record in ``(tgrid[i], tgrid[i+1]]``.

    Lets the engines take a plain, control-flow-free step through the (common) intervals in
    which no patient has a dose, infusion switch or reset.
    """
    idx = jnp.searchsorted(tgrid, change_time.reshape(-1), side="left") - 1
    flags = jnp.zeros(tgrid.shape[0] - 1, bool)
    return flags.at[idx].set(True, mode="drop") if idx.size else flags


def apply_due(ch: Changes, carry: tuple, t_b, propagate, apply) -> tuple:
    """Walk every patient through its change records due by ``t_b``: propagate exactly to each
    record's time, then apply it. ``carry`` is ``(t, x, u, ptr, last_reset)`` with per-patient
    ``[N]`` leaves; ``propagate(t, x, u, dt) -> x`` advances the state, ``apply(change, due,
    x, u, last_reset) -> (x, u, last_reset)`` applies a record where ``due``. The loop runs
    while any patient has a pending record (a scalar predicate: free when none does)."""

    def pending(c):
        return jnp.any(take(ch, c[3])["time"] <= t_b)

    def body(c):
        tc, x, u, ptr, last_reset = c
        change = take(ch, ptr)
        due = change["time"] <= t_b
        target = jnp.where(due, change["time"], tc)
        x = propagate(tc, x, u, target - tc)
        x, u, last_reset = apply(change, due, x, u, last_reset)
        ptr = jnp.minimum(ptr + due.astype(ptr.dtype), ch.time.shape[1] - 1)
        return target, x, u, ptr, last_reset

    return jax.lax.cond(
        pending(carry), lambda c: jax.lax.while_loop(pending, body, c), lambda c: c, carry
    )
