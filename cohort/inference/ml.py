"""Maximum likelihood with the random effects integrated out (FOCE-I or Laplace per subject).

Two stages: a naive pooled fit (all η = 0) moves the typical values from their initial guesses
into the right basin cheaply, then the marginal OFV is minimised by BFGS (scipy). Gradients of
the marginal OFV: the modes are searched once per point, then the per-subject marginal terms
are differentiated with the modes implicit in the parameters (:func:`laplace.implicit_mode`;
reverse mode for closed forms, forward mode through a Taylor polynomial of the predictions for
ODEs), which also yields the per-subject score vectors; BFGS starts from their outer-product
(BHHH) Hessian. (Small single-dose closed-form datasets used central differences of the OFV,
each point re-solving its modes, until 2026-12-06: on a 40-subject two-compartment infusion
fit that took 33 s against 3 s, and 3.8 s against 1.6 s on Theoph once compiled.) The pooled
fit's gradient is central differences, evaluated as one vmapped batch.

Standard errors come from a finite-difference Hessian of the exact gradient as ``R`` or
``R⁻¹SR⁻¹`` (NONMEM's default), mapped to the reported scales by the delta method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from cohort.errors import OptionError
from cohort.inference import laplace
from cohort.inference.layout import Layout
from cohort.inference.likelihood import LOG_2PI, n_gaussian
from cohort.inference.problem import BoundModel, Pop
from cohort.timing import apart

_GRAD_STEP = 1e-4
_SMALL = 20  # a gradient within _SMALL × gtol at a stall counts as converged
_ROUNDS = 3  # mode searches (of `iterations` each) tried at a point before it is rejected
# An IIV whose SD (log scale) ends below this is at its boundary (CV < 1 %): the data do not
# support it, whatever tiny value the optimiser stopped at (seen: 2e-3 from one start, 1e-19
# from another, for the same boundary solution)
BOUNDARY_SD = 0.01


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
    starts: dict = dataclasses.field(default_factory=dict)  # initial-estimate scan, multi-start

    @property
    def minus2ll(self) -> float:
        """``−2 log L`` including the ``N·log 2π`` constant."""
        return self.ofv + self.n_gaussian_obs * LOG_2PI

    @property
    def se(self) -> dict:
        if self.cov is None:
            return {k: float("nan") for k in self.names}
        return dict(zip(self.names, np.sqrt(np.maximum(np.diag(self.cov), 0.0))))


_COMPILED: dict = {}  # compile cache: (model structure, approx) -> jitted functions


class _Flat:
    """The free parameters (:meth:`Layout.to_free`) as one vector: packed in numpy (no eager
    JAX ops, each of which compiles on first use), unpacked inside compiled code."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.sizes = {
            "theta": len(layout.theta_free),
            "gamma": len(layout.gamma_free),
            "log_omega": len(layout.omega_free),
            "log_sigma": len(layout.sigma_free),
        }
        if layout.full:
            self.sizes["corr"] = len(layout.corr_free)

    def pack(self, pop: Pop) -> np.ndarray:
        lay = self.layout
        parts = [
            np.asarray(pop.theta)[lay.theta_free],
            np.asarray(pop.gamma)[lay.gamma_free],
            np.log(np.asarray(pop.omega))[lay.omega_free],
            np.log(np.asarray(pop.sigma)[lay.sigma_free]),
        ]
        if lay.full:
            parts.append(np.asarray(lay.to_free(pop)["corr"]))
        return np.concatenate([np.ravel(np.asarray(a, float)) for a in parts])

    def unpack(self, x) -> dict:
        out, k = {}, 0
        for name, n in self.sizes.items():
            out[name] = x[k : k + n]
            k += n
        return out

    def pop_at(self, x, base: Pop) -> Pop:
        return self.layout.from_free(self.unpack(x), base)


def _functions(bm: BoundModel, approx: str) -> dict:
    """Compiled functions of one model structure (fits of other data of the same shapes reuse
    them): ``batch(X [B, P], base, arrays) -> OFV [B]``, the naive pooled objective (random
    effects at zero) at a batch of points, and
    ``value_grad`` (see :meth:`_Objective.value_grad`), the FOCE-I/Laplace objective with its
    exact gradient; the rest of a fit (packing, reporting, delta-method Jacobian) runs in
    numpy."""
    key = (bm.structure, approx)
    if key not in _COMPILED:
        if len(_COMPILED) >= 32:
            _COMPILED.clear()
        layout = Layout(bm)
        flat = _Flat(layout)

        def one(x, base, arrays):
            return jnp.sum(laplace.pooled_terms(bm, flat.pop_at(x, base), arrays))

        def value_grad(x, base, eta0, arrays, iterations):
            # modes searched once, warm-started (no gradient through the iterations), then
            # the marginal terms differentiated with the modes implicit in the parameters
            pop = jax.lax.stop_gradient(flat.pop_at(x, base))
            eta_hat, _, _ = laplace.mode_search(
                bm, pop, eta0, arrays, iterations, steps=laplace.FAST_STEPS
            )

            def term(v, e_hat, d):
                return laplace.subject_marginal(bm, flat.pop_at(v, base), e_hat, d, approx)

            if not bm.forward_mode:  # per-subject values and gradients: one reverse pass,
                per_subject = jax.value_and_grad(term)  # vmapped over subjects
            else:  # ODE solves differentiate forward only: P tangents, value as aux

                def per_subject(v, e_hat, d):
                    jac, value = jax.jacfwd(lambda w: (term(w, e_hat, d),) * 2, has_aux=True)(v)
                    return value, jac

            terms, jac = jax.vmap(per_subject, in_axes=(None, 0, 0))(
                x, eta_hat, laplace.subject_data(arrays)
            )
            return jnp.sum(terms), jnp.sum(jac, axis=0), eta_hat, terms, jac

        _COMPILED[key] = {
            "flat": flat,
            "batch": jax.jit(jax.vmap(one, in_axes=(0, None, None))),
            "value_grad": jax.jit(value_grad),
        }
    return _COMPILED[key]


def _numpy_pop(pop: Pop) -> Pop:
    return Pop(*(np.asarray(a, dtype=float) for a in pop))


def _finish(flat: _Flat, x: np.ndarray, base: Pop, h: float = 1e-5):
    """Population at ``x``, the reported values and their Jacobian (central differences of
    elementwise maps: relative error ~h²), all in numpy."""
    layout = flat.layout

    def reported(v):
        return np.array([float(a) for a in layout.report(flat.pop_at(v, base)).values()])

    eye = np.eye(x.size) * h
    jac = np.stack([(reported(x + e) - reported(x - e)) / (2 * h) for e in eye], axis=1)
    return flat.pop_at(x, base), reported(x), jac


class _Objective:
    """OFV and its gradient over the free vector, with warm-started modes: the marginal
    (FOCE-I/Laplace) objective by implicit-mode AD, the pooled one by central differences
    evaluated as one batch."""

    def __init__(self, bm: BoundModel, base: Pop, approx: str, pooled: bool, iterations=30):
        self.bm, self.base, self.layout = bm, _numpy_pop(base), Layout(bm)
        self.functions = _functions(bm, approx)
        self.x0 = self.functions["flat"].pack(base)
        self.eta = np.zeros((bm.n_subjects, bm.n_eta))
        self.pooled, self.iterations = np.bool_(pooled), np.int32(iterations)
        self.evaluations = 0
        self.gradients: dict = {}  # recent gradients by point, for the stall test

    def run(self, points: np.ndarray):
        """The pooled objective at ``points [B, P]``, in fixed-size chunks (one compiled shape
        per fit)."""
        assert self.pooled, "marginal OFVs come from value_grad"
        size = 2 * self.x0.size + 1
        n = len(points)
        self.evaluations += n
        padded = np.concatenate([points, np.repeat(points[-1:], -n % size, axis=0)])
        batch = self.functions["batch"]
        outs = [
            jax.device_get(batch(padded[k : k + size], self.base, self.bm.arrays))
            for k in range(0, len(padded), size)
        ]
        return np.concatenate(outs)[:n]

    def stencil(self, x: np.ndarray, h: float = _GRAD_STEP) -> np.ndarray:
        eye = np.eye(x.size) * h
        return np.concatenate([x[None], x + eye, x - eye])

    @property
    def implicit(self) -> bool:
        """Whether OFV and gradient come from :meth:`value_grad` (the marginal objective)."""
        return not self.pooled

    def bhhh_inverse(self, x: np.ndarray) -> np.ndarray:
        """Inverse of the outer-product (BHHH) approximation of the OFV's Hessian at ``x``,
        ``(½ Σᵢ ∇termsᵢ ∇termsᵢᵀ)⁻¹``, from the per-subject gradients: BFGS started from it
        takes Newton-like first steps instead of steepest descent on unscaled parameters
        (e.g. 40 % fewer objective calls on the 74-subject steady-state fit)."""
        jac = self.value_grad(x)[4]
        h = 0.5 * jac.T @ jac
        if not np.all(np.isfinite(h)):
            return np.eye(x.size)
        w, v = np.linalg.eigh(0.5 * (h + h.T))
        w = np.maximum(w, 1e-6 * max(float(w.max()), 1e-12))  # keep it positive definite
        inv = (v / w) @ v.T
        return 0.5 * (inv + inv.T)  # exactly symmetric (scipy checks)

    def value_grad(self, x: np.ndarray):
        """OFV, its gradient ``[P]``, the modes, per-subject terms and their Jacobian
        ``[N, P]`` at ``x`` (implicit-mode AD; warm-started from the current modes)."""
        self.evaluations += 1
        out = self.functions["value_grad"](x, self.base, self.eta, self.bm.arrays, self.iterations)
        ofv, grad, eta, terms, jac = (np.asarray(a) for a in jax.device_get(out))
        return float(ofv), grad, eta, terms, jac

    def __call__(self, x: np.ndarray):
        ofv, grad = self._evaluate(x)
        if len(self.gradients) > 8:
            self.gradients.clear()
        self.gradients[np.asarray(x, float).tobytes()] = grad
        return ofv, grad

    def _implicit_at(self, x: np.ndarray, rounds: int = _ROUNDS):
        """``value_grad`` at ``x`` with the mode search continued from where it stopped while
        the gradient is not finite: one search (30 iterations) can end short of the modes
        from poor initial values (predictions far off the data), where ``∇²η O`` is not
        positive definite and the implicit derivative is NaN. Returns the last search's OFV,
        its modes and whether its gradient is finite; the warm start is kept only then."""
        previous = self.eta
        for _ in range(rounds):
            ofv, grad, eta, _, _ = self.value_grad(x)
            if np.isfinite(ofv) and np.all(np.isfinite(grad)):
                self.eta = eta
                return ofv, grad, eta, True
            if not np.all(np.isfinite(eta)):
                break
            self.eta = eta
        self.eta = previous
        return ofv, grad, eta, False

    def _evaluate(self, x: np.ndarray):
        if self.implicit:
            ofv, grad, _, usable = self._implicit_at(x)
            return (ofv, grad) if usable else (np.inf, np.zeros_like(x))
        ofv = self.run(self.stencil(x))
        p = x.size
        if not np.all(np.isfinite(ofv)):  # a failed solve or an impossible step: reject it
            return np.inf, np.zeros_like(x)
        grad = (ofv[1 : p + 1] - ofv[p + 1 :]) / (2 * _GRAD_STEP)
        return float(ofv[0]), grad

    def settle(self, x: np.ndarray, rounds: int = 3) -> float:
        """Converge the modes at ``x`` from the current warm start (the marginal objective);
        the OFV there."""
        ofv, _, eta, usable = self._implicit_at(x, rounds)
        if not usable and np.all(np.isfinite(eta)):  # no finite gradient there (e.g. at a
            self.eta = eta  # boundary): the OFV itself, as the last search left it
        return float(ofv)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Per-subject gradients of ``−log Lᵢ`` ``[N, P]`` (the marginal objective)."""
        return 0.5 * self.value_grad(x)[4]

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """The marginal OFV's Hessian: central differences of its exact gradient, symmetrised
        (every point starts from the centre's modes: value_grad leaves them as they are)."""
        cols = []
        for step in np.eye(x.size) * _GRAD_STEP:
            gp = self.value_grad(x + step)[1]
            gm = self.value_grad(x - step)[1]
            cols.append((gp - gm) / (2 * _GRAD_STEP))
        hess = np.stack(cols, axis=1)
        return 0.5 * (hess + hess.T)


def _agreeing(ofvs: np.ndarray, best: float) -> int:
    """How many starts' OFVs are finite and within 0.1 of ``best`` (a failed start's inf
    agrees with nothing, even with an inf best)."""
    if not np.isfinite(best):
        return 0
    return int(np.sum(np.abs(ofvs[np.isfinite(ofvs)] - best) < 0.1))


def _minimize(obj: _Objective, x0: np.ndarray, maxiter: int, gtol: float):
    options = {"maxiter": maxiter, "gtol": gtol}
    if obj.implicit:
        options["hess_inv0"] = obj.bhhh_inverse(x0)
    last = [np.inf]

    def stalled(intermediate_result):
        # The OFV's gradient has a noise floor (modes converged to 1e-10, not exactly), and
        # BFGS below it only burns line searches until "precision loss": stop once an
        # iteration gains < 1e-6 with the gradient within what counts as converged.
        fun, x = intermediate_result.fun, intermediate_result.x
        gain, last[0] = last[0] - fun, fun
        jac = obj.gradients.get(x.tobytes())  # BFGS's result carries no gradient
        if gain < 1e-6 and jac is not None and np.all(np.abs(jac) < _SMALL * gtol):
            raise StopIteration

    return scipy.optimize.minimize(
        obj, x0, jac=True, method="BFGS", options=options, callback=stalled
    )


def _compile_ahead(bm: BoundModel, base: Pop, approx: str) -> threading.Event:
    """Compile the marginal objective's program (:meth:`_Objective.value_grad`) on a background
    thread while the initial-estimate scan and the pooled fit run on this one: XLA releases
    the GIL while it compiles, and that program's compilation (2.4 s for Theoph on 2 cores)
    was most of a first small fit's wait. Later calls with the same shapes find it in JAX's
    compilation caches; an error is left for those calls to raise. Returns the event set when
    the compile has ended (an event, not ``Thread.join``: a join interrupted by Ctrl-C marks
    the thread stopped while it still runs, Python 3.11). Use it through
    :func:`_compiling_ahead`, which waits it out when the fit is interrupted."""
    obj = _Objective(bm, base, approx, pooled=False)
    args = (obj.x0, obj.base, obj.eta, bm.arrays, obj.iterations)
    fn = obj.functions["value_grad"]
    done = threading.Event()

    def build():
        try:
            fn.lower(*args).compile()
        except Exception:  # noqa: BLE001 - raised again, with context, where it is called
            pass
        finally:
            done.set()

    # its compile time is shown apart in the CLI's time line: the user did not wait for it
    threading.Thread(target=apart(build), name="compile-marginal-objective", daemon=True).start()
    return done


@contextlib.contextmanager
def _compiling_ahead(bm: BoundModel, base: Pop, approx: str) -> Iterator[threading.Event]:
    """:func:`_compile_ahead` for the block; when the block raises (a Ctrl-C, an error), the
    compile is waited out before the exception goes on: an interpreter that shut down while
    XLA compiled on another thread aborted (exit 134) instead of reporting the exception."""
    done = _compile_ahead(bm, base, approx)
    try:
        yield done
    except BaseException:
        while not done.is_set():  # a second Ctrl-C while waiting: wait on (about a second)
            try:
                done.wait()
            except KeyboardInterrupt:
                continue
        raise


def _fit_from(bm, start: Pop, approx, pooled_start: bool, maxiter, gtol, progress, ahead=None):
    """Pooled fit (random effects at zero) from ``start`` to reach the basin, then the marginal
    fit; returns the objective, scipy's result, the optimum and its OFV. ``ahead``: set when
    the marginal objective's compile on another thread (:func:`_compile_ahead`) has ended;
    waited for before it is first called (rather than compiled twice at once)."""
    base = start
    if pooled_start:
        if progress:
            progress("pooled fit (random effects at zero)")
        obj0 = _Objective(bm, base, approx, pooled=True)
        res0 = _minimize(obj0, obj0.x0, maxiter, gtol)
        if np.isfinite(res0.fun):
            cand = obj0.functions["flat"].pop_at(res0.x, obj0.base)
            base = cand._replace(omega=obj0.base.omega, corr=obj0.base.corr)
    if progress:
        progress(f"{approx.upper()} fit")
    obj = _Objective(bm, base, approx, pooled=False)
    if ahead is not None:
        ahead.wait()
    obj.settle(obj.x0)
    res = _minimize(obj, obj.x0, maxiter, gtol)
    x = np.asarray(res.x)
    return obj, res, x, obj.settle(x)


def _run_starts(bm, base, approx, init, pooled_start, starts, seed, maxiter, gtol, progress, ahead):
    """The fits from each start (see :func:`maximize`) and the scan's record."""
    from cohort.inference import starts as starting

    scan: dict = {}
    start_pops = [base]
    given = all(p.init is not None for p in bm.spec.params if not p.fixed)
    if init is None and pooled_start and not given:  # the user's inits, when complete, rule
        if progress:
            progress("initial estimates: scan of the pooled objective")
        scanner = _Objective(bm, base, approx, pooled=True)
        flat = scanner.functions["flat"]

        def evaluate(pops):
            return scanner.run(np.stack([flat.pack(p) for p in pops]))

        start_pops, scan = starting.best_starts(bm, base, evaluate, k=starts, seed=seed)
    # (start, pooled pre-fit first?) pairs. Complete initial estimates (the user's, or a
    # control stream's $THETA/$OMEGA) are where NONMEM starts FOCE: the first run starts
    # there; the pooled pre-fit, which can leave their basin (measured: moxonidine, OFV -3429
    # from the pre-fit against -3885 from the estimates), is only the second.
    plan = [(s, pooled_start) for s in start_pops]
    if given and init is None and pooled_start:
        plan = [(base, False), (base, True)][:starts]
    runs = []
    for s, pre_fit in plan:
        runs.append(_fit_from(bm, s, approx, pre_fit, maxiter, gtol, progress, ahead))
        found = np.array([r[3] for r in runs])
        if len(runs) >= 2 and np.isfinite(found).any() and _agreeing(found, np.nanmin(found)) >= 2:
            break  # two starts reached the same best optimum: the rest would add nothing
    if scan and not any(s is base for s, _ in plan) and _implausible(bm, runs):
        # The scan's best candidates can all lie in a degenerate basin: an Emax model's
        # EMAX and EC50 ran to 1e-10 from both (OFV 1160 against 820 from the model's
        # defaults; a probe). Its defaults are then tried as well; the best optimum is kept.
        runs.append(_fit_from(bm, base, approx, True, maxiter, gtol, progress, ahead))
        scan["defaults_tried"] = 1
    return runs, scan


def _implausible(bm, runs) -> bool:
    """Whether the best run's typical values leave their model parameters' plausible ranges
    (:func:`beyond_plausible`)."""
    ofvs = np.array([r[3] for r in runs], float)
    if not np.isfinite(ofvs).any():
        return True
    obj, _, x, _ = runs[int(np.nanargmin(np.where(np.isfinite(ofvs), ofvs, np.nan)))]
    theta = np.exp(np.asarray(obj.functions["flat"].pop_at(x, obj.base).theta, float))
    # (a value run off to infinity counts too; the report's check leaves non-finite ones out)
    reported = {p.name: min(float(v), np.finfo(float).max) for p, v in zip(bm.spec.params, theta)}
    return bool(beyond_plausible(bm, reported, {p.name for p in bm.spec.params if p.fixed}))


def beyond_plausible(bm, reported: dict, fixed: set[str]) -> list[str]:
    """Typical values outside their model parameter's plausible range (V2 = 6e6 L: the data
    do not identify it, and the optimiser let it run off), as ``"V2 = 6.1e+06 L (above
    1e+04)"``."""
    if bm.spec.transform is not None:  # estimated quantities are not the model's parameters
        return []
    # a typical value with covariate effects is at the user's reference (e.g. per kg): the
    # model's range need not apply to it
    plain = {q.name for q in bm.spec.params if not q.covariates} - fixed
    out = []
    for p in bm.spec.model.parameters:
        v = reported.get(p.name) if p.name in plain else None
        if v is not None and np.isfinite(v) and not p.lower <= v <= p.upper:
            side = f"above {p.upper:g}" if v > p.upper else f"below {p.lower:g}"
            out.append(f"{p.name} = {v:.4g} {p.units} ({side})")
    return out


def maximize(
    bm: BoundModel,
    approx: str = "foce",
    init: Pop | None = None,
    pooled_start: bool = True,
    maxiter: int = 500,
    gtol: float = 1e-3,
    se: str = "hessian",
    progress: Callable[[str], None] | None = None,
    starts: int = 3,
    seed: int = 0,
    flip_check: bool = True,
) -> MLEstimate:
    """Maximum-likelihood estimates of ``bm``'s population parameters.

    ``approx``: ``foce`` (FOCE with interaction, NONMEM's METHOD=1 INTER) or ``laplace``
    (closed-form models; used automatically for censored M3 data, as NONMEM requires).
    ``se``: ``hessian`` (inverse observed information), ``sandwich`` or ``none``.
    Without ``init`` (or every typical value's ``Param.init``), the starting typical values
    come from a scan of the pooled objective
    (:mod:`cohort.inference.starts`) and the fit is run from its ``starts`` best distinct
    candidates (stopping once two reach the same best OFV), the best optimum kept; with
    every initial value given the fit starts there (as NONMEM does), and with ``starts`` >= 2
    once more after a pooled pre-fit from them
    (``starts_agreeing`` says how many reached it); a
    one-compartment oral fit is also run from its flip-flop mirror, whose OFV is reported
    (``flip_check=False`` skips that refit, e.g. in simulation studies that know the mode).
    """
    from cohort.inference import starts as starting

    if se not in ("hessian", "sandwich", "none"):
        raise OptionError(f"se must be 'hessian', 'sandwich' or 'none', got {se!r}")
    if starts < 1:
        raise OptionError(f"starts must be >= 1, got {starts}")
    t0 = time.perf_counter()
    if bool(np.any(np.asarray(bm.arrays["cens"]))) and bm.engine == "closed_form":
        if approx != "laplace" and progress:
            progress("censored (BLQ) observations: LAPLACE instead of FOCE, as NONMEM's M3")
        approx = "laplace"
    if approx == "laplace" and bm.engine != "closed_form":
        raise OptionError("approx='laplace' needs second derivatives: closed-form models only")
    base = init if init is not None else bm.default_pop()
    with _compiling_ahead(bm, base, approx) as ahead:
        runs, scan = _run_starts(
            bm, base, approx, init, pooled_start, starts, seed, maxiter, gtol, progress, ahead
        )
    ofvs = np.array([r[3] for r in runs])
    best = (
        int(np.nanargmin(np.where(np.isfinite(ofvs), ofvs, np.nan)))
        if np.isfinite(ofvs).any()
        else 0
    )
    obj, res, x, ofv = runs[best]
    scan["starts"] = len(runs)
    scan["start_ofvs"] = [float(v) for v in ofvs]
    scan["starts_agreeing"] = _agreeing(ofvs, ofv)
    flip = starting.mirror(bm, obj.functions["flat"].pop_at(x, obj.base)) if flip_check else None
    if flip is not None:
        if progress:
            progress("flip-flop check: fit from the mirrored mode (KA <-> CL/V)")
        # Reported, not adopted: the estimate stays in the mode the starts chose (absorption
        # faster than elimination unless the user's inits say otherwise), and a mirror that
        # fits better is flagged for the user to judge (e.g. a degenerate IIV there).
        m_obj, _, m_x, m_ofv = _fit_from(bm, flip, approx, False, maxiter, gtol, None)
        scan["mirror_ofv"] = float(m_ofv)
        # an IIV that collapses to zero there marks a boundary (degenerate) solution
        m_omega = np.asarray(m_obj.functions["flat"].pop_at(m_x, m_obj.base).omega)
        scan["mirror_degenerate"] = bool(np.any(m_omega < BOUNDARY_SD))
    # A stall on "precision loss" where independent starts agree on the OFV is a minimum whose
    # gradient sits on the solver's noise floor (ODE models: rtol 1e-6), not a failed fit.
    agreed = "precision" in str(res.message).lower() and scan["starts_agreeing"] >= 2
    layout = obj.layout
    pop, values, jac = _finish(obj.functions["flat"], x, obj.base)
    if flip is not None:
        scan["ka_below_elimination"] = not bool(
            starting.absorbs_faster(bm, np.asarray(pop.theta)[None])[0]
        )
    reported = dict(zip(layout.report_names(), map(float, values)))
    cov = None
    if se != "none":
        if progress:
            progress("standard errors")
        cov = _covariance(obj, x, se, jac)
    return MLEstimate(
        pop=pop,
        eta=np.asarray(obj.eta),
        ofv=ofv,
        reported=reported,
        cov=cov,
        names=list(reported),
        # BFGS reports success at its first point when that point's OFV or gradient could
        # not be computed (it sees a zero gradient there): never a converged fit
        converged=bool(np.isfinite(ofv))
        and (bool(res.success) or _small_gradient(res, gtol) or agreed),
        message=str(res.message)
        + (
            f" (accepted: {scan['starts_agreeing']} starts reached this OFV within 0.1)"
            if agreed and not res.success
            else ""
        ),
        n_iterations=int(res.nit),
        seconds=time.perf_counter() - t0,
        approx=approx,
        n_gaussian_obs=n_gaussian(bm.arrays["mask"], bm.arrays["cens"]),
        se_method=se,
        starts=scan,
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
        cand = obj0.functions["flat"].pop_at(res0.x, obj0.base)
        base = cand._replace(omega=obj0.base.omega, corr=obj0.base.corr)
    search = jax.jit(lambda pop, eta, arrays: laplace.modes(bm, pop, eta, arrays))
    eta = search(base, jnp.zeros((bm.n_subjects, bm.n_eta)), bm.arrays)
    return base, np.asarray(eta)


def _small_gradient(res, gtol: float) -> bool:
    """BFGS often stops on precision loss at a minimum; accept a small gradient there."""
    return bool(np.all(np.abs(res.jac) < _SMALL * gtol)) if res.jac is not None else False


def _covariance(obj: _Objective, x: np.ndarray, se: str, jac) -> np.ndarray | None:
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
    jac = np.asarray(jac)
    return jac @ cov_x @ jac.T
