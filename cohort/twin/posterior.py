"""Individual posteriors of many twins at once: MAP + Laplace and per-patient NUTS.

MAP: the vmapped Gauss–Newton mode search of :mod:`cohort.inference.laplace` (the conditional
modes a FOCE fit computes), then the exact Hessian of the negative log posterior at each mode
(Laplace: η | data ≈ N(η̂, H⁻¹)). NUTS: numpyro's functional HMC kernel (``hmc(...,
algo="NUTS")``) vmapped over patients × chains, so each patient has its own step size and
mass matrix adaptation while all of them run in one compiled loop (numpyro's ``MCMC`` runs one
potential for all chains; here every patient has its own data).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cohort.inference import laplace
from cohort.inference.problem import BoundModel, Pop

_COMPILED: dict = {}  # (model structure, what) -> jitted function; bounded below


def _cached(bm: BoundModel, what: str, build):
    return _cached_key((bm.structure, what), build)


def _cached_key(key, build):
    if key not in _COMPILED:
        if len(_COMPILED) >= 32:
            _COMPILED.clear()
        _COMPILED[key] = build()
    return _COMPILED[key]


def _potential(bm: BoundModel, pop: Pop, omega_inv):
    """``U(η) = ½ Oᵢ(η)``: the negative log posterior of one patient (up to a constant). ODE
    models (``bm.forward_mode``) differentiate it in forward mode only: a twin has a few random
    effects, so forward tangents cost less than the reverse adjoint and compile smaller, also
    for second derivatives (``jacfwd`` of ``jacfwd``, not differences of gradients)."""
    reverse = not bm.forward_mode

    def u(eta, d):
        return 0.5 * laplace.objective(bm, pop, eta, d, omega_inv, reverse)

    return u


@dataclasses.dataclass
class Laplace:
    """MAP ``eta [N, q]``, posterior covariance ``cov [N, q, q]``, ``−2 log p(η̂ | y)`` up to
    a constant (``objective [N]``) and ``ok [N]`` (mode found, Hessian positive definite)."""

    eta: np.ndarray
    cov: np.ndarray
    objective: np.ndarray
    ok: np.ndarray


def per_patient(result) -> dict[str, np.ndarray]:
    """The per-patient arrays of a :class:`Laplace` or :class:`Samples` by field name, patient
    axis first (``Samples.seconds``, a total, left out): what blocks of patients are merged
    from and checkpointed as."""
    return {
        f.name: np.asarray(getattr(result, f.name))
        for f in dataclasses.fields(result)
        if f.name != "seconds"
    }


_NEWTON_STEPS = jnp.array([1.0, 0.5, 0.25, 0.1])


def starts(omega: np.ndarray, n: int, warm=None, draws: int = 1) -> np.ndarray:
    """Starting points ``[S, N, q]`` of the mode search: the prior mode (η = 0), ``draws``
    fixed draw(s) from the prior (the same for a patient whatever its data, so a sequential
    update and a joint fit search from the same points) and the warm start when given.
    Sparse data can leave a posterior with two modes (seen with two samples in a
    two-compartment model); the best of the searches is kept."""
    q = omega.shape[0]
    z = np.random.default_rng(20261203).standard_normal((draws, n, q))
    pts = [np.zeros((n, q)), *(z @ np.linalg.cholesky(omega).T)]
    if warm is not None:
        pts.append(np.asarray(warm, float))
    return np.stack(pts)


# A mode whose Newton decrement gᵀH⁻¹g (twice the decrease a Newton step still promises, in
# log-density units) is above this is not converged: its patients are searched again
UNCONVERGED_DECREMENT = 1e-4
POLISH_STEPS = 40  # Newton steps of that second search


def map_laplace(
    bm: BoundModel, pop: Pop, eta0, iterations: int = 3, newton_steps: int = 5
) -> Laplace:
    """Modes searched from each of ``eta0 [S, N, q]`` (see :func:`starts`; the best kept per
    patient) and Laplace covariances, for every patient in one vectorised computation.
    Patients whose search has not converged after ``newton_steps`` (a start where the
    predictions are orders of magnitude off, e.g. a wide prior under proportional error,
    needs more: seen 20 steps, left at a point 10⁵ above the mode) are searched again from
    where they are with :data:`POLISH_STEPS` Newton steps, as one smaller batch; the rest
    keep their first result (the common case pays nothing)."""
    lap, decrement = _map_laplace(bm, pop, np.asarray(eta0, float), bm.arrays, iterations,
                                  newton_steps)  # fmt: skip
    redo = np.flatnonzero(~lap.ok | ~(decrement < UNCONVERGED_DECREMENT))
    if redo.size:
        sub = jax.tree_util.tree_map(lambda a: a[redo] if getattr(a, "ndim", 0) else a, bm.arrays)
        again, _ = _map_laplace(bm, pop, lap.eta[redo][None], sub, 0, POLISH_STEPS)
        take = again.ok | ~lap.ok[redo]  # usable now (or nothing better before)
        take &= ~(again.objective > lap.objective[redo])
        rows = redo[take]
        for field in ("eta", "cov", "objective", "ok"):
            getattr(lap, field)[rows] = getattr(again, field)[take]
    return lap


def _map_laplace(bm, pop, eta0, arrays, iterations, newton_steps):
    """:func:`map_laplace`'s one vectorised search over the patients of ``arrays``: the
    :class:`Laplace` result and each mode's Newton decrement."""

    def build():
        def run(pop, eta0, arrays):
            n_starts, n = eta0.shape[0], eta0.shape[1]
            single = laplace.subject_data(arrays)
            # all starts as one larger batch: one copy of the model in the compiled program
            arrays = jax.tree_util.tree_map(
                lambda a: jnp.concatenate([a] * n_starts) if a.ndim else a, arrays
            )
            eta0 = eta0.reshape(n_starts * n, -1)
            if iterations:
                eta, value, _ = laplace.mode_search(bm, pop, eta0, arrays, iterations, tol=1e-12)
            else:  # polishing known points: Newton alone
                eta, value = eta0, jnp.zeros(eta0.shape[0])
            omega_inv, _ = laplace.omega_inverse(bm, pop)
            u = _potential(bm, pop, omega_inv)
            d = laplace.subject_data(arrays)
            forward = bm.forward_mode
            eta_n, hess = jax.vmap(lambda e, d: newton(u, e, d, newton_steps, forward=forward))(
                eta, d
            )
            eta = jnp.where(jnp.isfinite(value)[:, None], eta_n, eta)
            eta, cov, value, ok = best_start(u, eta, hess, d, n_starts)
            grad = jax.jacfwd(u) if forward else jax.grad(u)
            g = jax.vmap(grad)(eta, single)
            decrement = jnp.einsum("ni,nij,nj->n", g, cov, g)
            return eta, cov, value, ok, jnp.where(jnp.isfinite(decrement), decrement, jnp.inf)

        return jax.jit(run)

    fn = _cached(bm, f"map_laplace:{iterations}:{newton_steps}", build)
    eta, cov, value, ok, decrement = fn(pop, jnp.asarray(eta0, float), arrays)
    lap = Laplace(np.array(eta), np.array(cov), np.array(value), np.array(ok))
    return lap, np.asarray(decrement)


def fd_hessian(u, eta, d, h: float = 1e-4):
    """Hessian of ``u(·, d)`` by central differences of its gradient (``2q`` gradients):
    used where forward-over-reverse differentiation compiles slowly (long associative
    scans); accurate to ~1e-7 relative, ample for Newton steps and a Laplace covariance."""
    grad = jax.grad(u)
    steps = h * jnp.eye(eta.shape[-1], dtype=eta.dtype)
    g = jax.vmap(lambda s: grad(eta + s, d) - grad(eta - s, d))(steps) / (2 * h)
    return 0.5 * (g + g.T)


def newton(u, eta, d, steps: int, hessian=None, forward: bool = False):
    """``steps`` Newton steps on ``u(·, d)`` from ``eta`` (one patient): the exact Hessian
    with its eigenvalues taken in absolute value where it is not positive definite, and a
    line search. Returns the point and the Hessian of the last step (the Laplace precision:
    one copy of that graph). ``forward``: every derivative in forward mode (``u`` through an
    ODE solve that supports no other); ``hessian`` is then ignored."""
    if forward:
        grad, hess = jax.jacfwd(u), jax.jacfwd(jax.jacfwd(u))
    else:
        grad = jax.grad(u)
        hess = jax.hessian(u) if hessian is None else functools.partial(hessian, u)

    def step(carry, _):
        # Gauss-Newton converges linearly where residuals are large (its matrix is the
        # expected information, not the Hessian); Newton on the exact Hessian finishes the
        # mode. Within rounding of the minimum a step is trusted, not the noisy u.
        e, _ = carry
        g, h = grad(e, d), hess(e, d)
        w, vecs = jnp.linalg.eigh(h)
        w = jnp.maximum(jnp.abs(w), 1e-8 * jnp.max(jnp.abs(w)) + 1e-300)
        direction = vecs @ ((vecs.T @ g) / w)
        trial = e[None, :] - _NEWTON_STEPS[:, None] * direction[None, :]
        values = jax.vmap(lambda x: u(x, d))(trial)
        values = jnp.where(jnp.isfinite(values), values, jnp.inf)
        k = jnp.argmin(values)
        u0 = u(e, d)
        slack = 1e-10 * (1.0 + jnp.abs(u0))
        better = jnp.all(jnp.isfinite(trial[k])) & (values[k] <= u0 + slack)
        return (jnp.where(better, trial[k], e), h), None

    q = eta.shape[-1]
    return jax.lax.scan(step, (eta, jnp.eye(q, dtype=eta.dtype)), None, length=steps)[0]


def best_start(u, eta, hess, d, n_starts: int):
    """Of ``n_starts`` searches per patient (stacked start-major on the patient axis), the one
    with the lowest ``2u``, with its Laplace covariance and whether it is usable (finite,
    Hessian positive definite)."""
    n = eta.shape[0] // n_starts
    value = jax.vmap(lambda e, d: 2.0 * u(e, d))(eta, d)
    value = jnp.where(jnp.isfinite(value), value, jnp.inf).reshape(n_starts, n)
    best = jnp.argmin(value, axis=0)  # per patient; ties: the first start
    pick = jnp.arange(n_starts)[:, None] == best[None, :]  # [S, N] one-hot

    def chosen(x):
        x = x.reshape(n_starts, n, *x.shape[1:])
        mask = pick.reshape(pick.shape + (1,) * (x.ndim - 2))
        return jnp.sum(jnp.where(mask, x, 0.0), axis=0)

    eta, hess, value = chosen(eta), chosen(hess), jnp.min(value, axis=0)
    chol = jnp.linalg.cholesky(hess)
    ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(chol), axis=(-2, -1))
    eye = jnp.eye(eta.shape[-1], dtype=eta.dtype)
    inv_l = jax.vmap(lambda c: jax.scipy.linalg.solve_triangular(c, eye, lower=True))(
        jnp.where(ok[:, None, None], chol, eye)
    )
    cov = jnp.einsum("nki,nkj->nij", inv_l, inv_l)
    return eta, cov, value, ok


def modes(make_potential, params, eta0, data, *, key, steps: int = 30, hessian=None) -> Laplace:
    """MAP + Laplace for any per-patient potential: ``make_potential(params)`` returns
    ``u(eta, d)`` (negative log posterior of one patient with data ``d``); every leaf of
    ``data`` has the patient axis first. Newton from each start of ``eta0 [S, N, q]``
    (``hessian(u, eta, d)``: default exact, e.g. :func:`fd_hessian`)."""

    def build():
        def run(params, eta0, data):
            n_starts = eta0.shape[0]
            data = jax.tree_util.tree_map(lambda a: jnp.concatenate([a] * n_starts), data)
            eta0 = eta0.reshape(-1, eta0.shape[-1])
            u = make_potential(params)
            eta, hess = jax.vmap(lambda e, d: newton(u, e, d, steps, hessian))(eta0, data)
            return best_start(u, eta, hess, data, n_starts)

        return jax.jit(run)

    fn = _cached_key(("modes", key, steps, hessian), build)
    eta, cov, value, ok = fn(params, jnp.asarray(eta0), data)
    return Laplace(np.asarray(eta), np.asarray(cov), np.asarray(value), np.asarray(ok))


SEPARATED_SD = 2.0  # see Samples.separated
MAX_DIVERGENT = 0.01  # fraction of post-warmup transitions a converged posterior may have


@dataclasses.dataclass
class Samples:
    """NUTS draws ``eta [N, chain, draw, q]`` with per-patient diagnostics."""

    eta: np.ndarray
    rhat: np.ndarray  # [N, q]
    ess_bulk: np.ndarray  # [N, q]
    divergences: np.ndarray  # [N]
    seconds: float = 0.0

    @property
    def converged(self) -> np.ndarray:
        """R-hat < 1.01 and bulk ESS > 400 for every parameter, and at most
        :data:`MAX_DIVERGENT` of the transitions divergent, per patient: divergences mark a
        region the sampler cannot explore, so its draws (and intervals) can be biased even
        with a good R-hat (seen: R-hat 1.007 with 15.6 % divergent, reported as usable)."""
        total = self.eta.shape[1] * self.eta.shape[2]
        few = np.asarray(self.divergences) <= MAX_DIVERGENT * total
        return np.all((self.rhat < 1.01) & (self.ess_bulk > 400), axis=1) & few

    @property
    def separated(self) -> np.ndarray:
        """Per patient: chains that settled in different places (for some parameter, two
        chains' means lie more than :data:`SEPARATED_SD` within-chain SDs apart), i.e. a
        posterior with several modes that the chains do not cross. Longer runs rarely join
        them; more data (another day of records) or a narrower prior does. Well-mixed chains'
        means differ by about SD/√ESS (~0.1 SD)."""
        means = self.eta.mean(axis=2)  # [N, chain, q]
        within = self.eta.std(axis=2).mean(axis=1)  # [N, q]
        gap = (means.max(axis=1) - means.min(axis=1)) / np.maximum(within, 1e-300)
        return np.any(gap > SEPARATED_SD, axis=1)


def nuts(
    bm: BoundModel,
    pop: Pop,
    init: Laplace,
    *,
    chains: int = 4,
    warmup: int = 500,
    draws: int = 500,
    seed: int = 0,
    max_tree_depth: int = 8,
    retry: bool | int = 2,
    adapt_mass_matrix: bool = False,
    index=None,
) -> Samples:
    """Per-patient NUTS, all patients × chains in one vmapped program. Chains start from the
    Laplace approximation (mode + draws from it; inverse mass matrix = its covariance, kept
    during warmup unless ``adapt_mass_matrix``: only the step size adapts, so a short warmup
    suffices — 200 patients converge in 37 s instead of 60 s with 500 adapted iterations),
    which is also the warm start of a sequential update. With ``retry`` (rounds, default 2),
    patients not converged (R-hat ≥ 1.01, bulk ESS ≤ 400 or > 1 % divergent) are run again
    as one smaller batch with at least 500 warmup iterations adapting the mass matrix and
    three (then nine) times the draws, kept thinned (see :func:`sample`); the rest keep their
    first run."""

    def make_potential(pop):
        return _potential(bm, pop, laplace.omega_inverse(bm, pop)[0])

    return sample(
        make_potential,
        pop,
        bm.arrays,
        init,
        key=bm.structure,
        prepare=laplace.subject_data,
        chains=chains,
        warmup=warmup,
        draws=draws,
        seed=seed,
        max_tree_depth=max_tree_depth,
        retry=retry,
        adapt_mass_matrix=adapt_mass_matrix,
        index=index,
        forward=bm.forward_mode,
    )


def sample(
    make_potential,
    params,
    arrays,
    init: Laplace,
    *,
    key,
    prepare=None,
    chains: int = 4,
    warmup: int = 500,
    draws: int = 500,
    seed: int = 0,
    max_tree_depth: int = 8,
    retry: bool | int = True,
    lockstep: bool = True,
    adapt_mass_matrix: bool = True,
    index=None,
    target_accept: float = 0.8,
    forward: bool = False,
) -> Samples:
    """NUTS for any per-patient potential (see :func:`modes`); ``prepare(arrays)`` gives the
    per-patient data (leaves with the patient axis first; default: ``arrays`` itself). ``key``
    identifies the potential for the compiled-program cache. See :func:`nuts`. ``retry``: how
    many rerun rounds for patients not converged (``True``: one); round ``r`` runs
    ``max(2ʳ·warmup, 500)`` warmup iterations adapting the mass matrix and ``3ʳ·draws`` draws,
    kept thinned by ``3ʳ`` (diagnostics from the whole run). ``index``: the patients' global
    positions (default ``0..N-1``), which seed their chains (see :func:`_patient_streams`).

    ``lockstep=True`` vmaps patients × chains (one iteration costs the deepest tree of all
    lanes: best when a gradient is cheap, as in closed-form PK); ``False`` runs patients one
    after another inside the compiled program (``lax.map``), chains vmapped, so a patient
    whose posterior needs long trajectories does not hold up the others: best when each
    gradient is already a large vectorised computation (CGM twins' day-long trajectories).
    ``forward``: gradients in forward mode (numpyro's ``forward_mode_differentiation``), for
    potentials through ODE solves."""
    import time

    t0 = time.perf_counter()
    run = functools.partial(
        _nuts_batch, make_potential, params, key, prepare, chains=chains,
        max_tree_depth=max_tree_depth, lockstep=lockstep, target_accept=target_accept,
        forward=forward,
    )  # fmt: skip
    n = init.eta.shape[0]
    index = np.arange(n) if index is None else np.asarray(index, int)
    z, rhat, ess, div = run(
        init, arrays, warmup=warmup, draws=draws, seed=seed,
        adapt_mass_matrix=adapt_mass_matrix, index=index,
    )  # fmt: skip
    # divergences counted among the kept draws (thinned like them), so that their fraction
    # of the draws is what Samples.converged gates
    z, rhat, ess, div = z.copy(), rhat.copy(), ess.copy(), div.sum(axis=(1, 2))
    for r in range(1, int(retry) + 1):
        bad = np.flatnonzero(~Samples(z, rhat, ess, div).converged)
        if not bad.size:
            break
        sub = jax.tree_util.tree_map(
            lambda a, bad=bad: a[bad] if getattr(a, "ndim", 0) and a.shape[0] == n else a, arrays
        )
        part = dataclasses.replace(
            init,
            eta=init.eta[bad],
            cov=init.cov[bad],
            objective=init.objective[bad],
            ok=init.ok[bad],
        )
        # the robust pass: longer, with the mass matrix adapted (a posterior the Laplace
        # metric fits poorly, e.g. skewed or slowly mixing, is what lands here)
        thin = 3**r
        z2, rhat2, ess2, div2 = run(
            part, sub, warmup=max(2**r * warmup, 500), draws=thin * draws, seed=seed + r,
            adapt_mass_matrix=True, index=index[bad],
        )  # fmt: skip
        z[bad], rhat[bad], ess[bad] = z2[:, :, ::thin], rhat2, ess2
        div[bad] = div2[:, :, ::thin].sum(axis=(1, 2))
    return Samples(z, rhat, ess, div, time.perf_counter() - t0)


def _nuts_batch(
    make_potential, params, key, prepare, init: Laplace, arrays, *, chains, warmup, draws, seed,
    max_tree_depth, lockstep=True, adapt_mass_matrix=True, index=None, target_accept=0.8,
    forward=False,
):  # fmt: skip
    """One vmapped NUTS run: draws ``[N, chain, draw, q]``, R-hat, ESS, and which draws
    came from a divergent transition ``[N, chain, draw]``."""
    from numpyro.infer.hmc import hmc

    n, q = init.eta.shape

    def build():
        def run(params, starts, inv_mass, keys, arrays):
            u = make_potential(params)
            init_kernel, sample_kernel = hmc(
                potential_fn_gen=lambda d: lambda e: u(e, d), algo="NUTS"
            )

            def one_chain(start, mass, key, d):
                state = init_kernel(
                    start,
                    warmup,
                    inverse_mass_matrix=mass,
                    dense_mass=True,
                    max_tree_depth=max_tree_depth,
                    adapt_mass_matrix=adapt_mass_matrix,
                    target_accept_prob=target_accept,
                    forward_mode_differentiation=forward,
                    model_args=(d,),
                    rng_key=key,
                )

                def step(s, _):
                    s = sample_kernel(s, model_args=(d,))
                    return s, (s.z, s.diverging)

                state, _ = jax.lax.scan(step, state, None, length=warmup)
                _, (z, div) = jax.lax.scan(step, state, None, length=draws)
                return z, div

            d = arrays if prepare is None else prepare(arrays)
            per_patient = jax.vmap(one_chain, in_axes=(0, None, 0, None))  # over chains
            if lockstep:
                return jax.vmap(per_patient)(starts, inv_mass, keys, d)  # over patients
            return jax.lax.map(lambda a: per_patient(*a), (starts, inv_mass, keys, d))

        if n_dev == 1:
            return jax.jit(run)
        # Chains are independent: each device runs its share of every patient's chains
        # (shard_map, no communication), so a tree that one chain builds deeper holds up only
        # the chains on its own device, and the cores work in parallel (one XLA CPU device
        # runs its program on about one core).
        spec, whole = jax.sharding.PartitionSpec(None, "chain"), jax.sharding.PartitionSpec()
        mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:n_dev]), ("chain",))
        split = jax.shard_map(
            run, mesh=mesh, in_specs=(whole, spec, whole, spec, whole),
            out_specs=(spec, spec), check_vma=False,
        )  # fmt: skip
        return jax.jit(split)

    n_dev = chain_devices(chains)
    what = (f"nuts:{chains}:{warmup}:{draws}:{max_tree_depth}:{lockstep}:{adapt_mass_matrix}:"
            f"{target_accept}:{forward}:{n_dev}")  # fmt: skip
    fn = _cached_key((key, what), build)
    cov = np.where(init.ok[:, None, None], init.cov, np.eye(q)[None])
    chol = np.linalg.cholesky(cov)
    jitter, keys = _patient_streams(seed, np.arange(n) if index is None else index, chains, q)
    starts = init.eta[:, None, :] + np.einsum("nij,ncj->nci", chol, jitter)
    z, div = fn(params, jnp.asarray(starts), jnp.asarray(cov), jnp.asarray(keys), arrays)
    z = np.asarray(z)  # [N, chain, draw, q]
    rhat, ess = diagnostics(z)
    return z, rhat, ess, np.asarray(div)  # divergent flags [N, chain, draw]


def chain_devices(chains: int) -> int:
    """How many local devices the NUTS chains are split over: the most that share the chains
    equally (one CPU device per core as the CLI sets up, or several GPUs; 1 by default)."""
    n = len(jax.local_devices())
    return max(d for d in range(1, min(n, chains) + 1) if chains % d == 0)


def _patient_streams(seed: int, index, chains: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Chain start jitter ``[N, chains, q]`` and PRNG keys ``[N, chains, 2]`` (raw uint32
    pairs) from one random stream per patient, seeded by ``(seed, patient index)``: a
    patient's chains are the same whichever batch or worker runs it."""
    jitter = np.empty((len(index), chains, q))
    keys = np.empty((len(index), chains, 2), np.uint32)
    for k, i in enumerate(np.asarray(index, int)):
        rng = np.random.default_rng((int(seed), int(i)))
        jitter[k] = rng.standard_normal((chains, q))
        keys[k] = rng.integers(0, 2**32, size=(chains, 2), dtype=np.uint32)
    return jitter, keys


def diagnostics(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalised split R-hat and bulk ESS per patient and parameter (arviz's definitions,
    computed for all patients at once) for draws ``[N, chain, draw, q]``."""
    import arviz as az
    import xarray as xr

    da = xr.DataArray(np.moveaxis(z, 0, 2), dims=("chain", "draw", "patient", "eta_dim"))
    ds = xr.Dataset({"eta": da})
    rhat = az.rhat(ds, method="rank")["eta"].transpose("patient", "eta_dim").to_numpy()
    ess = az.ess(ds, method="bulk")["eta"].transpose("patient", "eta_dim").to_numpy()
    return rhat, ess


def laplace_draws(post: Laplace, n_draws: int, seed: int, ids) -> np.ndarray:
    """``[N, S, q]`` draws from each patient's Laplace approximation, each patient's from its
    own stream keyed by its ID (:func:`patient_normals`), so a forecast or dose for one
    patient does not change with the others selected beside it."""
    q = post.eta.shape[1]
    chol = np.linalg.cholesky(np.where(post.ok[:, None, None], post.cov, np.eye(q)[None]))
    z = patient_normals(seed, ids, (n_draws, q))
    return post.eta[:, None, :] + np.einsum("nij,nsj->nsi", chol, z)


def patient_normals(seed: int, ids, shape: tuple[int, ...]) -> np.ndarray:
    """``[N, *shape]`` standard normals, patient ``k``'s from a stream keyed by ``seed`` and
    its ID alone (a hash of the ID as the user wrote it)."""
    import hashlib

    from cohort.errors import show_id

    def key(pid) -> int:
        return int.from_bytes(hashlib.sha256(show_id(pid).encode()).digest()[:8], "little")

    ids = list(ids)
    out = np.empty((len(ids), *shape))
    for k, pid in enumerate(ids):
        out[k] = np.random.default_rng([int(seed), key(pid)]).standard_normal(shape)
    return out
