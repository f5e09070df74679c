"""Random effects integrated out per subject: conditional modes and FOCE-I/Laplace marginals.

Joint maximisation over population and random effects has a degenerate mode (DESIGN §7), so
the marginal likelihood is approximated per subject around its conditional mode η̂ᵢ:

    −2 log Lᵢ ≈ Oᵢ(η̂ᵢ) + log|Ω| + log|Mᵢ|,   Oᵢ(η) = Σⱼ lᵢⱼ(η) + ηᵀΩ⁻¹η

(``lᵢⱼ``: the −2 log-likelihood terms of :mod:`likelihood`). ``foce`` uses NONMEM's FOCE-I
expected-information matrix ``Mᵢ = Ω⁻¹ + Σⱼ (gⱼgⱼᵀ/Vⱼ + ½ hⱼhⱼᵀ/Vⱼ²)`` with ``g = ∂f/∂η``,
``h = ∂V/∂η`` and V evaluated at η̂ (interaction); ``laplace`` uses ``Mᵢ = ½∇²Oᵢ``. The modes
come from vmapped Gauss–Newton iterations with that same matrix and a line search, which only
need first derivatives of the predictions (so ODE models qualify, and compiles stay small).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cohort.errors import OptionError
from cohort.inference import likelihood, predict
from cohort.inference.problem import BoundModel, Pop

APPROXIMATIONS = ("foce", "laplace")
# Line-search step lengths tried at once (every candidate costs a prediction and its
# Jacobian); ODE solves try fewer. FAST_STEPS: three spanning 20x, for the ML fits with
# implicit gradients (five cost the 74-subject steady-state fit 40 % more time, same optimum).
_STEPS = jnp.array([1.0, 0.5, 0.25, 0.1, 0.02])
_STEPS_ODE = _STEPS[:3]
FAST_STEPS = (1.0, 0.3, 0.05)


def subject_data(arrays: dict) -> dict:
    """The per-subject arrays (leading axis = subject) that ``vmap`` maps over."""
    return {k: arrays[k] for k in ("time", "dv", "mask", "cens", "lloq", "features", "ev")}


_UNROLL = 4  # q x q algebra up to this size is written out elementwise


def _outer_sum(a, b):
    """``aᵀ b`` for ``a [J, p]``, ``b [J, r]`` as a broadcast product and a reduction (fuses
    with its inputs; a tiny ``dot`` does not)."""
    return jnp.sum(a[:, :, None] * b[:, None, :], axis=0)


def _matvec(a, x):
    return jnp.sum(a * x[None, :], axis=-1)


def _cholesky(a):
    """Lower Cholesky factor of a small SPD matrix, written out for ``q <= _UNROLL`` (NaN where
    not positive definite, like LAPACK's), else LAPACK."""
    q = a.shape[-1]
    if q > _UNROLL:
        return jnp.linalg.cholesky(a)
    low = [[None] * q for _ in range(q)]
    for j in range(q):
        low[j][j] = jnp.sqrt(a[..., j, j] - sum(low[j][k] ** 2 for k in range(j)))
        for i in range(j + 1, q):
            low[i][j] = (a[..., i, j] - sum(low[i][k] * low[j][k] for k in range(j))) / low[j][j]
    zero = jnp.zeros_like(a[..., 0, 0])
    rows = [jnp.stack([low[i][j] if j <= i else zero for j in range(q)], -1) for i in range(q)]
    return jnp.stack(rows, -2)


def _cho_solve(low, b):
    """``x`` with ``L Lᵀ x = b`` (``b [q]``), by substitution for small ``q``."""
    q = b.shape[-1]
    if q > _UNROLL:
        return jax.scipy.linalg.cho_solve((low, True), b)
    y = []
    for i in range(q):
        y.append((b[..., i] - sum(low[..., i, k] * y[k] for k in range(i))) / low[..., i, i])
    x = [None] * q
    for i in reversed(range(q)):
        x[i] = (y[i] - sum(low[..., k, i] * x[k] for k in range(i + 1, q))) / low[..., i, i]
    return jnp.stack(x, -1)


def _logdet_chol(low):
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(low, axis1=-2, axis2=-1)), axis=-1)


def _quad(x, a):
    """``xᵀ A x``."""
    return jnp.sum(x[:, None] * a * x[None, :])


def omega_inverse(bm: BoundModel, pop: Pop):
    """``Ω⁻¹`` and ``log|Ω|`` (diagonal Ω: elementwise; full: from the Cholesky factor)."""
    if not bm.spec.omega_blocks:
        return jnp.diag(pop.omega**-2), 2.0 * jnp.sum(jnp.log(pop.omega))
    chol = bm.omega_chol(pop)
    inv_l = jax.scipy.linalg.solve_triangular(chol, jnp.eye(chol.shape[0]), lower=True)
    return inv_l.T @ inv_l, 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))


def prediction(bm: BoundModel, pop: Pop, eta, d, reverse: bool = True):
    """One subject's predictions ``[J]`` and ok flag; from the Taylor polynomial of
    :func:`with_taylor` where ``d`` carries one."""
    logp = bm.log_params(pop, eta, d["features"])
    if "taylor" in d:
        logp0, f0, jac, hess, ok = d["taylor"]
        step = logp - logp0
        return f0 + jac @ step + 0.5 * jnp.einsum("jab,a,b->j", hess, step, step), ok
    return bm.predict_subject(logp, d["ev"], d["time"], reverse)


def with_taylor(bm: BoundModel, pop: Pop, eta, d: dict) -> dict:
    """``d`` with the second-order Taylor polynomial of one subject's ODE predictions in its
    log-parameters around ``(pop, eta)``, for the derivatives of the FOCE marginal at a mode.

    Those derivatives (:func:`subject_marginal` differentiated in the population parameters)
    need the predictions' first derivatives and their second derivatives with at least one
    direction along a random effect (``∂²f/∂η∂·``: the Jacobian ``g`` inside the FOCE
    information, and the implicit mode's derivative). The polynomial has exactly these at the
    expansion point (the second derivatives along two directions without a random effect
    are left at zero: nothing differentiates along them), so the marginal's value and
    gradient there are exact, while the ODE is solved once per subject with ``K + q K``
    forward tangents (``K`` log-parameters, ``q`` random effects). Differentiating the
    marginal through the solver instead (``jacfwd`` over the population parameters of the
    implicit mode's ``jacfwd``) compiled for 23 s on Theoph with a one-compartment ODE."""
    logp0 = jax.lax.stop_gradient(bm.log_params(pop, eta, d["features"]))
    n_p = logp0.shape[-1]

    def first(lp):
        return predict.value_and_jacfwd(
            lambda v: bm.predict_subject(v, d["ev"], d["time"], reverse=False), lp
        )

    if bm.iiv:

        def along(v):
            (f, ok, jac), (_, _, djac) = jax.jvp(first, (logp0,), (v,))
            return f, ok, jac, djac

        f, ok, jac, djac = jax.vmap(along)(jnp.eye(n_p, dtype=logp0.dtype)[jnp.asarray(bm.iiv)])
        f, ok, jac = f[0], ok[0], jac[0]
    else:
        f, ok, jac = first(logp0)
    hess = jnp.zeros(f.shape + (n_p, n_p), f.dtype)
    for k, i in enumerate(bm.iiv):  # rows and columns along the random effects
        hess = hess.at[:, i, :].set(djac[k]).at[:, :, i].set(djac[k])
    ok = ok & jnp.all(jnp.isfinite(jac)) & jnp.all(jnp.isfinite(hess))
    return {**d, "taylor": (logp0, f, jnp.where(ok, jac, 0.0), jnp.where(ok, hess, 0.0), ok)}


def objective(bm: BoundModel, pop: Pop, eta, d, omega_inv, reverse: bool = True):
    """``Oᵢ(η)`` of one subject (``+inf`` where its prediction failed); ``reverse=False``:
    ODE solves differentiable in forward mode only (see :meth:`BoundModel.predict_subject`)."""
    f, ok = prediction(bm, pop, eta, d, reverse)
    return _objective_at(bm, pop, eta, f, ok, d, omega_inv)


def _objective_at(bm: BoundModel, pop: Pop, eta, f, ok, d, omega_inv):
    """``Oᵢ(η)`` from the subject's predictions ``f`` at ``η`` (``+inf`` unless ``ok``)."""
    value = jnp.sum(bm.obs_terms(pop.sigma, f, d)) + _quad(eta, omega_inv)
    return jnp.where(ok & jnp.isfinite(value), value, jnp.inf)


def _jacobian(bm: BoundModel, pop: Pop, eta, d):
    """Predictions ``f [J]``, ``g = ∂f/∂η [J, q]`` and the ok flag, by forward-mode AD (q
    tangents). ODE solves go through diffrax's ``ForwardMode``: reverse mode (``jacrev``, one
    checkpointed adjoint pass per observation) made a 12-subject Theoph FOCE fit with the ODE
    engine take 349 s. (Closed forms on small single-dose datasets used central differences
    in η until the ML gradient became implicit-mode AD for every dataset.)"""

    def fun(e):
        return prediction(bm, pop, e, d, reverse=not bm.forward_mode)

    f, ok, g = predict.value_and_jacfwd(fun, eta)
    return f, jnp.where(ok, g, 0.0), ok


def local_terms(bm: BoundModel, pop: Pop, f, g, d):
    """Gradient ``Σⱼ ∂lⱼ/∂η [q]`` and the expected information ``Σⱼ ½E[∂²lⱼ] [q, q]``."""
    kind = bm.error.kind
    var = likelihood.residual_var(kind, pop.sigma, f)
    m, y, lim = likelihood.transformed(kind, f, d["dv"], d["lloq"])
    gm = g / jnp.maximum(f, 1e-300)[:, None] if kind == "log-additive" else g
    dvar = 0.0 if kind in ("additive", "log-additive") else 2.0 * pop.sigma[1] ** 2 * f
    h = dvar[:, None] * g if kind in ("proportional", "combined") else jnp.zeros_like(g)
    var = jnp.where(d["mask"], var, 1.0)
    r = y - m
    grad_n = (-2.0 * r / var)[:, None] * gm
    if kind in ("proportional", "combined"):  # the variance depends on η too
        grad_n = grad_n + (1.0 / var - r**2 / var**2)[:, None] * h
    w = jnp.where(d["mask"], 1.0, 0.0)
    if not bm.has_cens:  # no BLQ data: leave the M3 terms out of the compiled graph
        grad = jnp.sum(w[:, None] * grad_n, axis=0)
        wn = w[:, None]
        info = _outer_sum(gm * wn / var[:, None], gm)
        if kind in ("proportional", "combined"):
            info = info + 0.5 * _outer_sum(h * wn / var[:, None] ** 2, h)
        return grad, info
    sd = jnp.sqrt(var)
    z = (lim - m) / sd
    mills = jnp.exp(jax.scipy.stats.norm.logpdf(z) - jax.scipy.stats.norm.logcdf(z))
    dz = -gm / sd[:, None] - (z / (2.0 * var))[:, None] * h
    grad_c = (-2.0 * mills)[:, None] * dz
    cens = d["cens"]
    grad = jnp.sum(w[:, None] * jnp.where(cens[:, None], grad_c, grad_n), axis=0)
    wn = (w * jnp.where(cens, 0.0, 1.0))[:, None]
    wc = (w * jnp.where(cens, mills * (z + mills), 0.0))[:, None]
    info = (gm * wn / var[:, None]).T @ gm + 0.5 * (h * wn / var[:, None] ** 2).T @ h
    info = info + (dz * wc).T @ dz
    return grad, info


def _evaluate(bm: BoundModel, pop: Pop, candidates, d, omega_inv):
    """``Oᵢ``, predictions and their Jacobians at each candidate ``η [C, q]``."""
    fs, gs, oks = jax.vmap(lambda e: _jacobian(bm, pop, e, d))(candidates)

    def one(eta, f, ok):
        return _objective_at(bm, pop, eta, f, ok, d, omega_inv)

    return jax.vmap(one)(candidates, fs, oks), fs, gs


def mode_search(
    bm: BoundModel,
    pop: Pop,
    eta0,
    arrays: dict,
    iterations: int = 30,
    tol: float = 1e-10,
    steps: tuple[float, ...] | None = None,
):
    """Conditional modes by Gauss–Newton with a line search, vmapped over subjects.

    Returns ``(η̂ [N, q], Oᵢ(η̂) [N], info [N, q, q])`` with ``info = Σⱼ ½E[∂²lⱼ]`` at η̂. Each
    iteration evaluates predictions and Jacobians at every line-search candidate, so the
    compiled loop holds a single copy of the model. Iteration 0 evaluates ``eta0``, zero and
    their midpoint, and keeps the best: a warm start from modes at distant parameters (e.g. a
    rejected optimiser step) cannot trap the search far from the mode zero leads to.
    Iterations stop once no η moves by more than ``tol`` (or after ``iterations``).
    ``steps``: the line-search step lengths (default: five for closed forms, three for ODEs).
    """
    omega_inv, _ = omega_inverse(bm, pop)
    if steps is None:
        steps = _STEPS if bm.engine == "closed_form" else _STEPS_ODE
    steps = jnp.asarray(steps)
    first = jnp.zeros_like(steps).at[1].set(1.0).at[2:].set(0.5)  # η0, 0, η0/2, η0/2 ...

    def one(eta, d):
        q = eta.shape[0]
        n_obs = d["time"].shape[0]
        zeros = (jnp.zeros(n_obs), jnp.zeros((n_obs, q)), eta, jnp.zeros((q, q)))
        init = (0, jnp.asarray(jnp.inf), eta, jnp.asarray(jnp.inf), *zeros)

        def going(carry):
            k, moved = carry[0], carry[1]
            return (k < iterations) & (moved > tol)

        def step(carry):
            k, _, eta, value, f, g, direction, _ = carry
            # iteration 0: direction = η0, so the candidates are η0, 0 and η0/2
            trial = eta[None, :] - jnp.where(k == 0, first, steps)[:, None] * direction[None, :]
            values, fs, gs = _evaluate(bm, pop, trial, d, omega_inv)
            # the best candidate by a one-hot mask (elementwise, fuses; no gathers)
            pick = jnp.arange(values.shape[0]) == jnp.argmin(values)
            best_value = jnp.sum(jnp.where(pick, values, 0.0))
            better = best_value < value

            def chosen(x, current):
                mask = pick.reshape(pick.shape + (1,) * (x.ndim - 1))
                return jnp.where(better, jnp.sum(jnp.where(mask, x, 0.0), axis=0), current)

            new_eta = chosen(trial, eta)
            moved = jnp.where(k == 0, jnp.inf, jnp.max(jnp.abs(new_eta - eta)))
            value = jnp.where(better, best_value, value)
            f, g = chosen(fs, f), chosen(gs, g)
            grad, info = local_terms(bm, pop, f, g, d)
            # Gauss-Newton matrix 2(info + Ω⁻¹) is positive definite: a Cholesky solve (no
            # LU pivoting loop in the graph); a failed factorisation gives a zero step.
            chol = _cholesky(2.0 * (info + omega_inv))
            direction = _cho_solve(chol, grad + 2.0 * _matvec(omega_inv, new_eta))
            direction = jnp.where(jnp.all(jnp.isfinite(direction)), direction, 0.0)
            return k + 1, moved, new_eta, value, f, g, direction, info

        _, _, eta, value, _, _, _, info = jax.lax.while_loop(going, step, init)
        return eta, value, info

    return jax.vmap(one)(jnp.asarray(eta0), subject_data(arrays))


def modes(bm: BoundModel, pop: Pop, eta0, arrays: dict, iterations: int = 30):
    """Conditional modes ``η̂ [N, q]`` (no gradients flow through the iterations)."""
    pop = jax.lax.stop_gradient(pop)
    return mode_search(bm, pop, eta0, arrays, iterations)[0]


def marginal_from_search(bm: BoundModel, pop: Pop, eta, value, info, arrays, approx="foce"):
    """Per-subject ``−2 log Lᵢ`` (without ``log 2π``) from :func:`mode_search` output."""
    if approx not in APPROXIMATIONS:
        raise OptionError(f"approx must be one of {APPROXIMATIONS}, got {approx!r}")
    omega_inv, logdet_omega = omega_inverse(bm, pop)

    def one(e, v, m, d):
        return _subject_total(bm, pop, e, v, m, d, approx, omega_inv, logdet_omega)

    return jax.vmap(one)(eta, value, info, subject_data(arrays))


def implicit_mode(bm: BoundModel, pop: Pop, eta_hat, d: dict):
    """One subject's conditional mode as a differentiable function of ``pop``.

    The value is ``eta_hat`` (converged by :func:`mode_search`); the derivative comes from the
    implicit function theorem on ``∇η Oᵢ(η̂; pop) = 0``: ``dη̂ = −(∇²η Oᵢ)⁻¹ ∂(∇η Oᵢ)/∂pop ·
    dpop``. The outer gradient of the marginal OFV then needs one pass of second derivatives
    at the modes instead of re-solving them at every point of a difference stencil. Written
    as a JVP rule, so reverse mode transposes it. ODE models take every derivative in forward
    mode (diffrax's ``ForwardMode``; ``jacfwd`` of ``jacfwd`` for the second ones)."""

    def grad_eta(e, p):
        omega_inv, _ = omega_inverse(bm, p)
        grad = jax.jacfwd if bm.forward_mode else jax.grad
        return grad(lambda x: _objective_raw(bm, p, x, d, omega_inv))(e)

    @jax.custom_jvp
    def mode_of(p, e_hat):
        return e_hat

    @mode_of.defjvp
    def _mode_jvp(primals, tangents):
        p, e_hat = primals
        hess = jax.jacfwd(grad_eta)(e_hat, p)
        _, cross = jax.jvp(lambda pp: grad_eta(e_hat, pp), (p,), (tangents[0],))
        return e_hat, -_cho_solve(_cholesky(hess), cross)

    return mode_of(pop, jax.lax.stop_gradient(eta_hat))


def _objective_raw(bm: BoundModel, pop: Pop, eta, d, omega_inv):
    """``Oᵢ(η)`` without the failed-solve guard (differentiated at converged modes)."""
    f, _ = prediction(bm, pop, eta, d, reverse=not bm.forward_mode)
    return jnp.sum(bm.obs_terms(pop.sigma, f, d)) + _quad(eta, omega_inv)


def subject_marginal(bm: BoundModel, pop: Pop, eta_hat, d: dict, approx: str = "foce"):
    """One subject's ``−2 log Lᵢ`` at its converged mode ``eta_hat``, differentiable in ``pop``
    with the mode implicit (:func:`implicit_mode`): ``vmap(grad(...))`` over subjects gives
    the per-subject score vectors in one reverse pass."""
    omega_inv, logdet_omega = omega_inverse(bm, pop)
    if bm.forward_mode:  # derivatives from one solve with forward tangents
        d = with_taylor(bm, pop, jax.lax.stop_gradient(eta_hat), d)
    eta = implicit_mode(bm, pop, eta_hat, d)
    f, g, ok = _jacobian(bm, pop, eta, d)
    value = _objective_at(bm, pop, eta, f, ok, d, omega_inv)
    _, info = local_terms(bm, pop, f, g, d)
    return _subject_total(bm, pop, eta, value, info, d, approx, omega_inv, logdet_omega)


def _subject_total(bm, pop, eta, value, info, d, approx, omega_inv, logdet_omega):
    """``Oᵢ(η̂) + log|Ω| + log|Mᵢ|`` of one subject (``+inf`` where not defined)."""
    if approx == "laplace":
        mat = 0.5 * jax.hessian(lambda x: objective(bm, pop, x, d, omega_inv))(eta)
        sign, logdet = jnp.linalg.slogdet(mat)
    else:  # Ω⁻¹ + expected information: positive definite, log-determinant via Cholesky
        logdet = _logdet_chol(_cholesky(omega_inv + info))
        sign = jnp.where(jnp.isfinite(logdet), 1.0, -1.0)
    total = value + logdet_omega + logdet
    return jnp.where((sign > 0) & jnp.isfinite(total), total, jnp.inf)


def marginal_terms(
    bm: BoundModel, pop: Pop, eta0, arrays: dict, approx: str = "foce", iterations: int = 30
):
    """Per-subject ``−2 log Lᵢ`` and the modes, searching from ``eta0``."""
    eta, value, info = mode_search(bm, pop, eta0, arrays, iterations)
    return marginal_from_search(bm, pop, eta, value, info, arrays, approx), eta


def pooled_terms(bm: BoundModel, pop: Pop, arrays: dict):
    """Per-subject ``−2 log L`` with every random effect at zero (naive pooled fit)."""
    eta = jnp.zeros((arrays["time"].shape[0], bm.n_eta))
    f, ok = bm.predict(pop, eta, arrays)
    return jnp.where(ok, jnp.sum(bm.obs_terms(pop.sigma, f, arrays), axis=1), jnp.inf)


def cwres(bm: BoundModel, pop: Pop, eta_hat, arrays: dict):
    """Conditional weighted residuals (Hooker et al. 2007) at the modes, ``[N, J]``: the data
    minus the FOCE linearised mean ``f(η̂) − g η̂``, whitened by ``(g Ω gᵀ + diag(V))^(-1/2)``
    (the symmetric root, matching NONMEM's CWRES)."""
    omega = bm.omega_chol(pop) @ bm.omega_chol(pop).T

    def one(eta, d):
        f, g, _ = _jacobian(bm, pop, eta, d)
        var = likelihood.residual_var(bm.error.kind, pop.sigma, f)
        m, y, _ = likelihood.transformed(bm.error.kind, f, d["dv"], d["lloq"])
        gm = g / jnp.maximum(f, 1e-300)[:, None] if bm.error.kind == "log-additive" else g
        mask = d["mask"] & ~d["cens"]
        gm = jnp.where(mask[:, None], gm, 0.0)
        cov = gm @ omega @ gm.T + jnp.diag(jnp.where(mask, var, 1.0))
        resid = jnp.where(mask, y - m + gm @ eta, 0.0)
        # whitened with the symmetric C^(-1/2), as NONMEM does (a Cholesky factor would make
        # each residual depend on the order of the subject's rows)
        lam, vec = jnp.linalg.eigh(cov)
        white = vec @ ((vec.T @ resid) / jnp.sqrt(lam))
        return jnp.where(mask, white, 0.0)

    return jax.vmap(one)(eta_hat, subject_data(arrays))
