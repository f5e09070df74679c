"""Which population parameters are free, how they map to an unconstrained vector, and how they
are reported (names, natural scale, units) — shared by the ML, NUTS and SVI fits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from cohort.inference.problem import BoundModel, Pop, array_module

_CORR = biject_to(constraints.corr_cholesky)


def _merge(xp, base, free, values):
    """``base`` with the entries at indices ``free`` replaced by ``values`` (by stacking)."""
    if len(free) == 0:
        return base
    if len(free) == len(base):
        return values
    pos = {int(k): i for i, k in enumerate(free)}
    return xp.stack([values[pos[k]] if k in pos else base[k] for k in range(len(base))])


class Layout:
    """Free parts of :class:`Pop` for one bound model, and their reporting."""

    def __init__(self, bm: BoundModel):
        spec = bm.spec
        self.bm = bm
        self.theta_free = np.array([k for k, p in enumerate(spec.params) if not p.fixed], int)
        self.gamma_free = np.array([g for g, e in enumerate(bm.effects) if e.fixed is None], int)
        comps = spec.error.components
        self.sigma_free = np.array([i for i, c in enumerate(("add", "prop")) if c in comps], int)
        self.eta_names = tuple(spec.params[k].name for k in bm.iiv)
        fixed_sd = {p.name for p in spec.params if p.omega_fixed}
        self.omega_free = np.array(
            [i for i, n in enumerate(self.eta_names) if n not in fixed_sd], int
        )
        # Correlations estimated: the lower-triangle pairs (i > j, numpyro's CorrCholesky
        # order i(i-1)/2 + j) within a block of Ω; the others' partial correlations stay 0,
        # which makes the correlation matrix block-diagonal (NONMEM's $OMEGA BLOCK(n)).
        index = {name: i for i, name in enumerate(self.eta_names)}
        block_of = {}
        held = spec.fixed_blocks()  # fixed whole: their correlations stay at the initial ones
        for b, block in enumerate(spec.omega_blocks):
            for name in block:
                block_of[index[name]] = b if block not in held else -1 - b
        q = len(self.eta_names)
        pairs = [(i, j) for i in range(q) for j in range(i)]
        self.corr_pairs = [
            (i, j)
            for i, j in pairs
            if block_of.get(i, -1) >= 0 and block_of.get(j, -1) == block_of[i]
        ]
        self.corr_held = [
            (i, j) for i, j in pairs if block_of.get(i, 0) < 0 and block_of.get(j, 0) == block_of[i]
        ]
        self.corr_free = np.array([i * (i - 1) // 2 + j for i, j in self.corr_pairs], int)
        self.n_corr = len(pairs)
        self.full = bool(self.corr_pairs)
        # the unconstrained correlations the free ones are merged into: the spec's initial
        # values (held blocks keep them; estimated pairs start from them)
        self.corr_init = np.linalg.cholesky(spec.omega_corr_matrix())
        self._corr_base = None

    @property
    def correlated(self) -> bool:
        """Whether Ω has correlations (estimated or held), i.e. is not diagonal."""
        return self.full or bool(self.corr_held)

    # -- unconstrained vector ------------------------------------------------------------------
    def to_free(self, pop: Pop) -> dict:
        u = {
            "theta": pop.theta[self.theta_free],
            "gamma": pop.gamma[self.gamma_free],
            "log_omega": jnp.log(pop.omega[self.omega_free]),
            "log_sigma": jnp.log(pop.sigma[self.sigma_free]),
        }
        if self.full:
            u["corr"] = _CORR.inv(pop.corr)[self.corr_free]
        return u

    def from_free(self, u: dict, base: Pop) -> Pop:
        """Inverse of :meth:`to_free`; assembled by stacking (no scatter ops when traced), and in
        plain numpy when every input is a numpy array (no JAX dispatch or compilation)."""
        xp = array_module(*u.values(), *base)
        theta = _merge(xp, base.theta, self.theta_free, u["theta"])
        gamma = _merge(xp, base.gamma, self.gamma_free, u["gamma"])
        sigma = _merge(xp, base.sigma, self.sigma_free, xp.exp(u["log_sigma"]))
        omega = _merge(xp, base.omega, self.omega_free, xp.exp(u["log_omega"]))
        if self.full:
            held = xp.asarray(self.corr_base(), dtype=u["corr"].dtype)
            corr = _CORR(_merge(xp, held, self.corr_free, u["corr"]))
        else:
            corr = base.corr
        return Pop(theta, gamma, omega, corr, sigma)

    def corr_base(self) -> np.ndarray:
        """Unconstrained vector of the initial correlations (numpy, computed once)."""
        if self._corr_base is None:
            if self.corr_held:  # only held pairs need nonzero base values
                with jax.ensure_compile_time_eval():  # concrete even when called under jit
                    base = _CORR.inv(jnp.asarray(self.corr_init))
                self._corr_base = np.asarray(base, float)
            else:
                self._corr_base = np.zeros(self.n_corr)
        return self._corr_base

    # -- reporting -----------------------------------------------------------------------------
    def report(self, pop: Pop) -> dict:
        """Named population estimates on their natural scales (NONMEM/nlme quantities); leaves
        may carry leading draw axes (numpy or JAX)."""
        spec, bm = self.bm.spec, self.bm
        out = {}
        xp = array_module(*pop)
        for k, p in enumerate(spec.params):
            out[p.name] = xp.exp(pop.theta[..., k])
            out[f"log_{p.name}"] = pop.theta[..., k]
        for g, e in enumerate(bm.effects):
            gamma = pop.gamma[..., g]
            out[e.label] = xp.expm1(gamma) if e.kind == "binary" else gamma
        chol = bm.omega_chol(pop)
        omega = chol @ xp.swapaxes(chol, -1, -2)
        for i, name in enumerate(self.eta_names):
            out[f"omega_{name}"] = pop.omega[..., i]
            out[f"omega2_{name}"] = omega[..., i, i]
        if self.full or self.corr_held:
            corr = pop.corr @ xp.swapaxes(pop.corr, -1, -2)
            for i, j in sorted(self.corr_pairs + self.corr_held):
                out[f"corr_{self.eta_names[j]}_{self.eta_names[i]}"] = corr[..., i, j]
        for i in self.sigma_free:
            kind = ("add", "prop")[i]
            out[f"sigma_{kind}"] = pop.sigma[..., i]
            out[f"sigma2_{kind}"] = pop.sigma[..., i] ** 2  # NONMEM's $SIGMA is a variance
        return out

    def report_names(self) -> list[str]:
        """Names of :meth:`report` in order (without evaluating anything)."""
        spec, bm = self.bm.spec, self.bm
        names = []
        for p in spec.params:
            names += [p.name, f"log_{p.name}"]
        names += [e.label for e in bm.effects]
        for name in self.eta_names:
            names += [f"omega_{name}", f"omega2_{name}"]
        pairs = sorted(self.corr_pairs + self.corr_held)
        names += [f"corr_{self.eta_names[j]}_{self.eta_names[i]}" for i, j in pairs]
        for i in self.sigma_free:
            names += [f"sigma_{('add', 'prop')[i]}", f"sigma2_{('add', 'prop')[i]}"]
        return names

    def units(self, typical: bool = False) -> dict:
        """Units of every reported quantity; with ``typical`` the parameters' units as their
        typical values are defined by the covariate model (``L/h per WT``), else as
        individual values (``L/h``)."""
        spec, bm = self.bm.spec, self.bm
        out = {}
        for p in spec.params:
            unit = spec.units(p.name)
            out[p.name] = _scaled_units(unit, p) if typical else unit
            out[f"log_{p.name}"] = f"log({unit})" if unit else "1"
        for e in bm.effects:
            out[e.label] = "1"
        for name in self.eta_names:
            out[f"omega_{name}"] = "1 (SD of log parameter)"
            out[f"omega2_{name}"] = "1 (variance of log parameter)"
        dv_units = output_units(spec)
        log_dv = spec.error.kind == "log-additive"
        out["sigma_add"] = "1 (SD of log DV)" if log_dv else dv_units
        out["sigma2_add"] = (
            "1 (variance of log DV)" if log_dv else f"({dv_units})²" if dv_units else "1"
        )
        out["sigma_prop"] = "1 (fraction of prediction)"
        out["sigma2_prop"] = "1 (variance of the fraction)"
        return out

    def fixed_names(self) -> set:
        spec = self.bm.spec
        names = {p.name for p in spec.params if p.fixed}
        names |= {f"log_{p.name}" for p in spec.params if p.fixed}
        names |= {e.label for e in self.bm.effects if e.fixed is not None}
        for p in spec.params:
            if p.omega_fixed:
                names |= {f"omega_{p.name}", f"omega2_{p.name}"}
        names |= {f"corr_{self.eta_names[j]}_{self.eta_names[i]}" for i, j in self.corr_held}
        return names


def _scaled_units(unit: str, param) -> str:
    """Units of a typical value as its covariate model defines it: ``L/h per WT`` for a power
    covariate with exponent fixed at 1 and reference 1 (a per-kg parameter), ``L/h at WT = 70``
    for other power/linear covariates (the typical value at the reference)."""
    if not unit:
        return unit
    notes = []
    for c in param.covariates:
        if c.kind == "power" and c.fixed == 1.0 and (c.ref == 1.0):
            return f"{unit} per {c.column}"
        if c.kind in ("power", "exp") and c.ref is not None:
            notes.append(f"{c.column} = {c.ref:g}")
        elif c.kind in ("power", "exp"):
            notes.append(f"{c.column} = median")
    return f"{unit} at {', '.join(notes)}" if notes else unit


def output_units(spec) -> str:
    """Units of the observed output (the DV)."""
    m = spec.model
    for o in m.outputs:
        if o.name == spec.output:
            return o.units
    return m.units().get(spec.output, "")
