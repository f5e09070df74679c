"""Maximum likelihood with the random effects integrated out (FOCE-I or Laplace per subject).

Two stages: a naive pooled fit (all η = 0) moves the typical values from their initial guesses
into the right basin cheaply, then the marginal OFV is minimised by BFGS (scipy). Gradients are
central differences evaluated as one vmapped batch (the centre and ±h along every free
parameter, each re-solving its conditional modes from the centre's): the batch compiles from
first derivatives of the predictions only, so it is small, works unchanged for ODE models, and
also yields per-subject score vectors for the sandwich covariance. Standard errors come from a
batched finite-difference Hessian (``R``) or ``R⁻¹SR⁻¹`` (NONMEM's default), mapped to the
reported scales by the delta method.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jax.flatten_util import ravel_pytree

from cohort.inference import laplace
from cohort.inference.layout import Layout
from cohort.inference.likelihood import LOG_2PI, n_gaussian
from cohort.inference.problem import BoundModel, Pop

_GRAD_STEP = 1e-4
_HESS_STEP = 1e-3


@dataclasses.dataclass
class MLEstimate:
    """Outcome of :func:`maximize`: population values, the covariance of the reported values,
    conditional modes (EBE), OFV and optimiser diagnostics."""

    pop: Pop
    eta: np.ndarray
    ofv: float
    reported: dict
    cov: np.ndarray | None
    names: list
    converged: bool
    message: str
    n_iterations: int
    seconds: float
    approx: str
    n_gaussian_obs: int
    se_method: str

    @property
    def minus2ll(self) -> float:
        """``−2 log L`` including the ``N·log 2π`` constant."""
        return self.ofv + self.n_gaussian_obs * LOG_2PI

    @property
    def se(self) -> dict:
        if self.cov is None:
            return {k: float("nan") for k in self.names}
        return dict(zip(self.names, np.sqrt(np.maximum(np.diag(self.cov), 0.0))))


_COMPILED: dict = {}  # compile cache: (model structure, approx, pooled, iterations) -> jitted


def _batched(bm: BoundModel, approx: str, pooled: bool, iterations: int):
    """``(X [B, P], base, eta0, arrays) -> (OFV [B], η̂ [B, N, q], terms [B, N])``, jitted
    once per model structure (fits on other data of the same shape reuse the compiled code)."""
    key = (bm.structure, approx, pooled, iterations)
    if key not in _COMPILED:
        if len(_COMPILED) >= 32:
            _COMPILED.clear()
        _COMPILED[key] = _build_batched(bm, approx, pooled, iterations)
    return _COMPILED[key]


def _helpers(bm: BoundModel) -> dict:
    """Jitted small functions of the free vector (one compile each per model structure)."""
    key = (bm.structure, "helpers")
    if key not in _COMPILED:
        layout = Layout(bm)
        _, unravel = ravel_pytree(layout.to_free(bm.default_pop()))

        def pop_at(x, base):
            return layout.from_free(unravel(x), base)

        def reported(x, base):
            return jnp.stack(list(layout.report(pop_at(x, base)).values()))

        _COMPILED[key] = {
            "to_free": jax.jit(lambda pop: ravel_pytree(layout.to_free(pop))[0]),
            "pop_at": jax.jit(pop_at),
            "reported": jax.jit(reported),
            "reported_jac": jax.jit(jax.jacfwd(reported)),
        }
    return _COMPILED[key]


def _build_batched(bm: BoundModel, approx: str, pooled: bool, iterations: int):
    layout = Layout(bm)
    _, unravel = ravel_pytree(layout.to_free(bm.default_pop()))

    def one(x, base, eta0, arrays):
        pop = layout.from_free(unravel(x), base)
        if pooled:
            terms = laplace.pooled_terms(bm, pop, arrays)
            return jnp.sum(terms), eta0, terms
        terms, eta = laplace.marginal_terms(bm, pop, eta0, arrays, approx, iterations)
        return jnp.sum(terms), eta, terms

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


class _Objective:
    """OFV and its central-difference gradient over the free vector, with warm-started modes."""

    def __init__(self, bm: BoundModel, base: Pop, approx: str, pooled: bool):
        self.bm, self.base, self.layout = bm, base, Layout(bm)
        self.helpers = _helpers(bm)
        self.x0 = np.asarray(self.helpers["to_free"](base))
        self.eta = jnp.zeros((bm.n_subjects, bm.n_eta))
        self.batch = _batched(bm, approx, pooled, 30)
        self.evaluations = 0

    def run(self, points: np.ndarray):
        """Evaluate ``points [B, P]`` in fixed-size chunks (one compiled shape per fit)."""
        size = 2 * self.x0.size + 1
        n = len(points)
        self.evaluations += n
        padded = np.concatenate([points, np.repeat(points[-1:], -n % size, axis=0)])
        outs = [
            self.batch(jnp.asarray(padded[k : k + size]), self.base, self.eta, self.bm.arrays)
            for k in range(0, len(padded), size)
        ]
        ofv = np.concatenate([np.asarray(o[0]) for o in outs])[:n]
        eta = jnp.concatenate([o[1] for o in outs])[:n]
        terms = np.concatenate([np.asarray(o[2]) for o in outs])[:n]
        return ofv, eta, terms

    def stencil(self, x: np.ndarray, h: float = _GRAD_STEP) -> np.ndarray:
        eye = np.eye(x.size) * h
        return np.concatenate([x[None], x + eye, x - eye])

    def __call__(self, x: np.ndarray):
        ofv, eta, _ = self.run(self.stencil(x))
        p = x.size
        if not np.all(np.isfinite(ofv)):  # a failed solve or an impossible step: reject it
            return np.inf, np.zeros_like(x)
        grad = (ofv[1 : p + 1] - ofv[p + 1 :]) / (2 * _GRAD_STEP)
        self.eta = eta[0]
        return float(ofv[0]), grad

    def settle(self, x: np.ndarray, rounds: int = 3) -> float:
        """Converge the modes at ``x`` from the current warm start; the OFV there."""
        ofv = np.inf
        for _ in range(rounds):
            o, eta, _ = self.run(x[None])
            ofv, self.eta = float(o[0]), eta[0]
        return ofv

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Per-subject gradients of ``−log Lᵢ`` ``[N, P]``."""
        _, _, terms = self.run(self.stencil(x))
        p = x.size
        return 0.5 * (terms[1 : p + 1] - terms[p + 1 :]).T / (2 * _GRAD_STEP)

    def hessian(self, x: np.ndarray, h: float = _HESS_STEP) -> np.ndarray:
        p = x.size
        e = np.eye(p) * h
        pairs = [(i, j) for i in range(p) for j in range(i)]
        pts = [x, *(x + e), *(x - e)]
        for i, j in pairs:
            pts += [x + e[i] + e[j], x + e[i] - e[j], x - e[i] + e[j], x - e[i] - e[j]]
        ofv, _, _ = self.run(np.stack(pts))
        f0, fp, fm = ofv[0], ofv[1 : p + 1], ofv[p + 1 : 2 * p + 1]
        hess = np.diag((fp - 2 * f0 + fm) / h**2)
        for k, (i, j) in enumerate(pairs):
            pp, pm, mp, mm = ofv[2 * p + 1 + 4 * k : 2 * p + 5 + 4 * k]
            hess[i, j] = hess[j, i] = (pp - pm - mp + mm) / (4 * h**2)
        return hess


def _minimize(obj: _Objective, x0: np.ndarray, maxiter: int, gtol: float):
    return scipy.optimize.minimize(
        obj, x0, jac=True, method="BFGS", options={"maxiter": maxiter, "gtol": gtol}
    )


def maximize(
    bm: BoundModel,
    approx: str = "foce",
    init: Pop | None = None,
    pooled_start: bool = True,
    maxiter: int = 500,
    gtol: float = 1e-3,
    se: str = "hessian",
    progress: Callable[[str], None] | None = None,
) -> MLEstimate:
    """Maximum-likelihood estimates of ``bm``'s population parameters.

    ``approx``: ``foce`` (FOCE with interaction, NONMEM's METHOD=1 INTER) or ``laplace``
    (closed-form models; used automatically for censored M3 data, as NONMEM requires).
    ``se``: ``hessian`` (inverse observed information), ``sandwich`` or ``none``.
    """
    if se not in ("hessian", "sandwich", "none"):
        raise ValueError(f"se must be 'hessian', 'sandwich' or 'none', got {se!r}")
    t0 = time.perf_counter()
    if bool(np.any(np.asarray(bm.arrays["cens"]))) and bm.engine == "closed_form":
        approx = "laplace"
    if approx == "laplace" and bm.engine != "closed_form":
        raise ValueError("approx='laplace' needs second derivatives: closed-form models only")
    base = init if init is not None else bm.default_pop()
    if pooled_start and init is None:
        if progress:
            progress("pooled fit (random effects at zero)")
        obj0 = _Objective(bm, base, approx, pooled=True)
        res0 = _minimize(obj0, obj0.x0, maxiter, gtol)
        if np.isfinite(res0.fun):
            cand = obj0.helpers["pop_at"](jnp.asarray(res0.x), base)
            base = cand._replace(omega=base.omega, corr=base.corr)
    if progress:
        progress(f"{approx.upper()} fit")
    obj = _Objective(bm, base, approx, pooled=False)
    obj.settle(obj.x0)
    res = _minimize(obj, obj.x0, maxiter, gtol)
    x = np.asarray(res.x)
    ofv = obj.settle(x)
    layout = obj.layout
    pop = obj.helpers["pop_at"](jnp.asarray(x), base)
    values = np.asarray(obj.helpers["reported"](jnp.asarray(x), base))
    reported = dict(zip(layout.report_names(), map(float, values)))
    cov = None
    if se != "none":
        if progress:
            progress("standard errors")
        cov = _covariance(obj, base, x, se)
    return MLEstimate(
        pop=pop,
        eta=np.asarray(obj.eta),
        ofv=ofv,
        reported=reported,
        cov=cov,
        names=list(reported),
        converged=bool(res.success) or _small_gradient(res, gtol),
        message=str(res.message),
        n_iterations=int(res.nit),
        seconds=time.perf_counter() - t0,
        approx=approx,
        n_gaussian_obs=n_gaussian(bm.arrays["mask"], bm.arrays["cens"]),
        se_method=se,
    )


def quick_start(bm: BoundModel, progress: Callable[[str], None] | None = None) -> tuple:
    """A cheap starting point for sampling large datasets: the naive pooled fit of the typical
    values and residual error, the initial IIV, and the conditional modes there."""
    if progress:
        progress("pooled fit and conditional modes (start values)")
    base = bm.default_pop()
    obj0 = _Objective(bm, base, "foce", pooled=True)
    res0 = _minimize(obj0, obj0.x0, 500, 1e-3)
    if np.isfinite(res0.fun):
        cand = obj0.helpers["pop_at"](jnp.asarray(res0.x), base)
        base = cand._replace(omega=base.omega, corr=base.corr)
    search = jax.jit(lambda pop, eta, arrays: laplace.modes(bm, pop, eta, arrays))
    eta = search(base, jnp.zeros((bm.n_subjects, bm.n_eta)), bm.arrays)
    return base, np.asarray(eta)


def _small_gradient(res, gtol: float) -> bool:
    """BFGS often stops on precision loss at a minimum; accept a small gradient there."""
    return bool(np.all(np.abs(res.jac) < 20 * gtol)) if res.jac is not None else False


def _covariance(obj: _Objective, base: Pop, x: np.ndarray, se: str) -> np.ndarray | None:
    info = 0.5 * obj.hessian(x)  # observed information of log L (OFV = −2 log L)
    try:
        r_inv = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return None
    if se == "sandwich":
        s = obj.scores(x)
        cov_x = r_inv @ (s.T @ s) @ r_inv
    else:
        cov_x = r_inv
    if not np.all(np.isfinite(cov_x)) or np.any(np.diag(cov_x) < 0):
        return None
    jac = np.asarray(obj.helpers["reported_jac"](jnp.asarray(x), base))
    return jac @ cov_x @ jac.T
