"""The exact solution of linear compartment systems, once, for the engine's closed form and
for inference's predictions: the modal decomposition of a patient's linear PK system and the
integral ``phi`` of a mode over an interval.

The disposition matrix ``M·diag(1/V)`` is similar to the symmetric ``diag(V)^-1/2 · M ·
diag(V)^-1/2`` (equal flows both ways), so its eigenproblem is symmetric: real, stable, solved in
closed form for 1-2 compartments (a Jacobi rotation) and by ``eigh`` beyond. A first-order depot
adds the mode ``-ka`` by partial fractions.
"""

from __future__ import annotations

import jax.numpy as jnp

from cohort.models.base import Model, Tree


def phi(r, dt):
    """``∫_0^dt exp(r s) ds = expm1(r dt) / r`` with its ``r -> 0`` limit (safe for gradients:
    the unused branch never divides by zero)."""
    small = jnp.abs(r) < 1e-12
    safe = jnp.where(small, 1.0, r)
    return jnp.where(small, dt, jnp.expm1(safe * dt) / safe)


def off_coincidence(ka, rates, dtype=None):
    """``ka`` moved off a near-coincidence with a disposition rate ``-λ`` (``rates [M]``: the
    λ), the flip-flop point, where the partial fractions are singular: the depot's and that
    mode's amplitudes grow as ``1/|λ + ka|`` with opposite signs, and their sum loses
    ``eps·ka/|λ + ka|`` of relative accuracy. Within ``δ·ka`` of it, ka is put ``δ·ka`` away
    on its own side, which changes the solution by ~δ relatively: δ = 1e-7 in float64;
    √eps ≈ 3.5e-4 in float32, where the cancellation alone was 3 % at a distance of 1e-5·ka
    and 300 % at 0 (a probe's case), and both terms now stay below ~7e-4. ``dtype``: the
    precision the solution is used in, when the decomposition is computed in a finer one."""
    delta = max(1e-7, float(jnp.finfo(dtype or jnp.result_type(ka)).eps) ** 0.5)
    d = rates + ka  # [M]
    near = jnp.argmin(jnp.abs(d), axis=0)
    d = jnp.take_along_axis(d, near[None], axis=0)[0] if d.ndim > 1 else d[near]
    side = jnp.where(d >= 0, 1.0, -1.0)
    return jnp.where(jnp.abs(d) < delta * ka, ka - d + side * delta * ka, ka)


def _sym_eig(m):
    """Eigenvalues ``[n]`` and orthonormal eigenvectors (nested lists, ``q[i][k]``) of a
    symmetric 1x1 or 2x2 matrix given as nested lists of scalars: closed formulas, so the
    traced graph holds a few elementwise ops instead of a LAPACK call and its derivative."""
    if len(m) == 1:
        return [m[0][0]], [[1.0]]
    a, b, d = m[0][0], m[0][1], m[1][1]
    angle = 0.5 * jnp.arctan2(2.0 * b, a - d)
    c, s = jnp.cos(angle), jnp.sin(angle)
    l1 = a * c * c + 2.0 * b * s * c + d * s * s
    l2 = a * s * s - 2.0 * b * s * c + d * c * c
    return [l1, l2], [[c, -s], [s, c]]


def modes(model: Model, p: Tree, dtype=None) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Per-patient modal decomposition: rates ``r [M]``, directions ``dirs [S, M]`` (amount
    space) and input weights ``w [M, S]`` (a unit input into each state -> mode amplitudes).

    The 1- and 2-compartment eigenproblems are solved in closed form and the matrices
    assembled by stacking (no scatter ops): per-subject likelihoods under ``vmap``/``grad``
    compile and run several times faster, and batched engine solves avoid a LAPACK call per
    patient; 3 compartments use ``eigh``. ``dtype``: the precision the modes are used in
    when ``p`` is finer (see :func:`off_coincidence`)."""
    lp = model.linear_pk
    n = lp.n_cmt
    if n > 2:
        return _modes_eigh(model, p, dtype)
    names = model.state_names
    vols = [p[v] for v in lp.volumes]
    flows = [p[q] for q in lp.flows]
    if n == 1:  # scaling directions by √V and weights by 1/√V cancels: keep both at one
        lam, q, sq = [-p[lp.cl] / vols[0]], [[1.0]], [1.0]
    else:
        sq = [jnp.sqrt(v) for v in vols]
        qf = flows[0]
        mat = [
            [-(p[lp.cl] + qf) / vols[0], qf / (sq[0] * sq[1])],
            [qf / (sq[0] * sq[1]), -qf / vols[1]],
        ]
        lam, q = _sym_eig(mat)
    pdir = [[sq[i] * q[i][k] for k in range(n)] for i in range(n)]  # amount space, [i][mode]
    wgt = [[q[i][k] / sq[i] for i in range(n)] for k in range(n)]  # [mode][compartment]
    disp = {lp.central: 0, **{s: i + 1 for i, s in enumerate(lp.peripherals)}}
    like = p[lp.cl]
    zero = jnp.zeros_like(like)

    def full(x):
        return jnp.broadcast_to(jnp.asarray(x, like.dtype), like.shape)

    cols = [[full(pdir[disp[s]][k]) if s in disp else zero for s in names] for k in range(n)]
    rows = [[full(wgt[k][disp[s]]) if s in disp else zero for s in names] for k in range(n)]
    rates = [full(x) for x in lam]
    if lp.depot is not None:
        ka = p[lp.ka]
        ka = off_coincidence(ka, jnp.stack(rates), dtype)
        frac = [wgt[k][0] * ka / (rates[k] + ka) for k in range(n)]
        d = names.index(lp.depot)
        for k in range(n):
            rows[k][d] = frac[k]
        v_ka = [
            1.0 + zero
            if s == lp.depot
            else (-sum(pdir[disp[s]][k] * frac[k] for k in range(n)) if s in disp else zero)
            for s in names
        ]
        cols.append(v_ka)
        rows.append([1.0 + zero if s == lp.depot else zero for s in names])
        rates.append(-ka)
    r = jnp.stack(rates)
    dirs = jnp.stack([jnp.stack(c) for c in cols], axis=-1)  # [S, M]
    w = jnp.stack([jnp.stack(row) for row in rows])  # [M, S]
    return r, dirs, w


def _eigh(s):
    """Eigen-decomposition of a small symmetric matrix (``eigh``: stable, real, on GPU)."""
    return jnp.linalg.eigh(s)


def _modes_eigh(model: Model, p: Tree, dtype=None) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Any number of compartments: the eigenproblem by ``eigh`` (3 compartments)."""
    lp = model.linear_pk
    names = model.state_names
    n = lp.n_cmt
    vols = jnp.stack([p[v] for v in lp.volumes])
    flows = [p[q] for q in lp.flows]
    m = jnp.zeros((n, n), dtype=vols.dtype)
    m = m.at[0, 0].set(-(p[lp.cl] + sum(flows)))
    for j, q in enumerate(flows, start=1):
        m = m.at[0, j].set(q).at[j, 0].set(q).at[j, j].set(-q)
    sq = jnp.sqrt(vols)
    lam, q = _eigh(m / jnp.outer(sq, sq))
    pdir = sq[:, None] * q  # columns: mode directions in amount space
    wgt = q.T / sq[None, :]  # rows: modal weight of a unit input into each compartment
    disp_idx = [names.index(lp.central), *(names.index(s) for s in lp.peripherals)]
    s = len(names)
    dirs = jnp.zeros((s, n), dtype=vols.dtype).at[jnp.array(disp_idx)].set(pdir)
    w = jnp.zeros((n, s), dtype=vols.dtype).at[:, jnp.array(disp_idx)].set(wgt)
    if lp.depot is None:
        return lam, dirs, w
    d = names.index(lp.depot)
    ka = p[lp.ka]
    ka = off_coincidence(ka, lam, dtype)
    frac = wgt[:, 0] * ka / (lam + ka)  # depot dose -> disposition modes (via the central input)
    w = w.at[:, d].set(frac)
    v_ka = jnp.zeros(s, dtype=vols.dtype).at[d].set(1.0)
    v_ka = v_ka.at[jnp.array(disp_idx)].add(-(pdir @ frac))
    dirs = jnp.concatenate([dirs, v_ka[:, None]], axis=1)
    w_ka = jnp.zeros((1, s), dtype=vols.dtype).at[0, d].set(1.0)
    return jnp.concatenate([lam, -ka[None]]), dirs, jnp.concatenate([w, w_ka], axis=0)
