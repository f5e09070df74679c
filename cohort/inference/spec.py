"""What to estimate: typical values, covariate effects, inter-individual variability, residual
error.

Individual parameters are log-normal: ``log P_ik = θ_k + Σ_c γ_kc z_ic + η_ik`` with
``η_i ~ N(0, Ω)``. Every covariate effect is linear on that log scale once its feature ``z`` is
built from the data (``power``: ``log(cov/ref)``; ``exp``: ``cov - ref``; ``binary``: the 0/1
value, with γ = log(1 + β) so β is the proportional shift NONMEM users report). An optional
``transform`` maps the estimated individual parameters to the model's (e.g. ``V = CL/KE`` to
reproduce nlme's ``lKe/lKa/lCl`` Theoph parameterisation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from cohort.errors import CohortError
from cohort.models.base import Model
from cohort.models.structure import parameters_reaching

COVARIATE_KINDS = ("power", "exp", "binary")
ERROR_KINDS = ("additive", "proportional", "combined", "log-additive")
# Parameters that are fractions or lag times keep their model default unless asked for.
_NOT_LOGNORMAL = ("F", "ALAG")


class SpecError(CohortError, ValueError):
    """The model specification is inconsistent; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class Covariate:
    """Effect of a subject covariate (a data column) on one log-normal parameter.

    ``ref`` None means the median over subjects; ``fixed`` gives a known coefficient (e.g. the
    exponent 1 of a per-kg parameter) instead of estimating it; ``init`` starts the estimate.
    ``binary``: a 0/1 column shifts the parameter by the factor ``1 + effect``; with ``ref`` the
    indicator is "column < ref" (NONMEM's ``IF(APGR.LT.5)``).
    """

    column: str
    kind: str = "power"
    ref: float | None = None
    fixed: float | None = None
    init: float = 0.0

    def __post_init__(self):
        if self.kind not in COVARIATE_KINDS:
            raise SpecError(
                f"Covariate {self.column!r}: kind {self.kind!r} not in {COVARIATE_KINDS}"
            )
        if self.kind == "binary" and self.fixed is not None and self.fixed <= -1:
            raise SpecError(f"Covariate {self.column!r}: a binary shift must be > -1")


@dataclasses.dataclass(frozen=True)
class Param:
    """A log-normally distributed individual parameter.

    ``init`` is the typical value to start from (natural scale; None: the model default or the
    value found by the quick pooled fit); ``fixed=True`` keeps it there. ``iiv`` adds a random
    effect with initial SD ``omega`` (log scale); ``omega_fixed=True`` keeps that SD (NONMEM's
    ``$OMEGA ... FIX``). ``prior`` is ``(median, log-scale sd)`` of the typical value for
    Bayesian fits (default: the initial value with a log-scale sd of 2).
    """

    name: str
    init: float | None = None
    iiv: bool = True
    omega: float = 0.3
    covariates: tuple[Covariate, ...] = ()
    fixed: bool = False
    prior: tuple[float, float] | None = None
    units: str = ""
    omega_fixed: bool = False

    def __post_init__(self):
        if self.omega_fixed and not self.iiv:
            raise SpecError(f"Param {self.name!r}: omega_fixed=True needs iiv=True")
        if self.init is not None and not self.init > 0:
            raise SpecError(f"Param {self.name!r}: init must be > 0 (log-normal), got {self.init}")
        if self.fixed and self.init is None:
            raise SpecError(f"Param {self.name!r}: fixed=True needs an init value")
        if not self.omega > 0:
            raise SpecError(f"Param {self.name!r}: omega (initial IIV SD) must be > 0")
        columns = [c.column for c in self.covariates]
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:  # both would be labelled NAME~COLUMN, and one replaced the other
            raise SpecError(
                f"Param {self.name!r}: more than one effect of covariate {twice[0]!r}; give "
                "one effect per covariate and parameter"
            )


@dataclasses.dataclass(frozen=True)
class ErrorModel:
    """Residual error: ``additive`` N(f, a²), ``proportional`` N(f, (b f)²), ``combined``
    N(f, a² + b² f²), ``log-additive`` log y ~ N(log f, a²). ``add``/``prop``: initial SDs."""

    kind: str = "additive"
    add: float | None = None
    prop: float | None = None

    def __post_init__(self):
        if self.kind not in ERROR_KINDS:
            raise SpecError(f"ErrorModel: kind {self.kind!r} is not one of {ERROR_KINDS}")

    @property
    def components(self) -> tuple[str, ...]:
        return {
            "additive": ("add",),
            "proportional": ("prop",),
            "combined": ("add", "prop"),
            "log-additive": ("add",),
        }[self.kind]


@dataclasses.dataclass(frozen=True)
class NLME:
    """A nonlinear mixed-effects model: structural ``model`` + statistical model.

    ``params`` default to every positive model parameter except F and ALAG, each with IIV.
    ``omega``: ``"diagonal"``, ``"full"`` (one correlated block over all random effects;
    LKJ prior in Bayesian fits) or NONMEM-style blocks with the rest diagonal, e.g.
    ``"CL+V"`` (``$OMEGA BLOCK(2)`` for CL, V) or ``"CL+V;KA+Q"`` (two blocks; ML fits).
    ``omega_corr``: initial correlations within a block, e.g. ``{"CL+V": 0.5}`` (default 0);
    a block whose parameters all have ``omega_fixed`` is fixed whole, its correlations
    included (NONMEM's ``$OMEGA BLOCK(n) ... FIX``).
    ``transform`` maps a dict of estimated individual parameters
    (arrays) to model parameters; names it does not return keep their values in ``fixed``
    or the model defaults. ``output`` is the observed model output (default: the first).
    """

    model: Model
    params: tuple[Param, ...] = ()
    error: ErrorModel = ErrorModel()
    omega: str = "diagonal"
    transform: Callable[[dict], dict] | None = None
    output: str | None = None
    fixed: Mapping[str, float] = dataclasses.field(default_factory=dict)
    omega_corr: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.model, str):
            from cohort.models import get

            object.__setattr__(self, "model", get(self.model))
        if isinstance(self.error, str):
            object.__setattr__(self, "error", ErrorModel(self.error))
        out = self.output or self.model.output_names[0]
        if out not in self.model.output_names + self.model.state_names:
            raise SpecError(
                f"NLME: output {out!r} is not an output of {self.model.name!r}; choose from "
                f"{list(self.model.output_names)}"
            )
        object.__setattr__(self, "output", out)
        if not self.params:  # the parameters the observed output can inform
            object.__setattr__(self, "params", default_params(self.model, out))
        object.__setattr__(self, "params", tuple(self.params))
        names = [p.name for p in self.params]
        if self.omega not in ("diagonal", "full"):
            _ = self.omega_blocks  # validates the block structure
        if len(set(names)) != len(names):
            raise SpecError(f"NLME: parameter names repeat: {names}")
        known = set(self.model.parameter_names)
        if self.transform is None:
            unknown = [n for n in names if n not in known]
            if unknown:
                raise SpecError(
                    f"NLME: {unknown} are not parameters of {self.model.name!r} "
                    f"({sorted(known)}); give a transform to map them to model parameters"
                )
            reach = parameters_reaching(self.model, out)
            flat = [p.name for p in self.params if p.name not in reach and not p.fixed]
            if flat:
                raise SpecError(
                    f"NLME: {flat} cannot change {out!r}, the observed output of "
                    f"{self.model.name!r}: the data cannot inform them (a flat likelihood; "
                    "their estimates would be arbitrary). Leave them out of the estimated "
                    "parameters (they keep their model values), or fit an output they affect"
                )
        bad_fixed = [k for k in self.fixed if k not in known]
        if bad_fixed:
            raise SpecError(f"NLME: fixed names {bad_fixed} are not model parameters")
        if not any(p.iiv for p in self.params):
            raise SpecError("NLME: at least one parameter needs inter-individual variability")
        object.__setattr__(self, "omega_corr", dict(self.omega_corr))
        self.omega_corr_matrix()  # validates the initial correlations

    def omega_corr_matrix(self):
        """The initial correlation matrix of the random effects (``iiv_names`` order) from
        ``omega_corr``; a :class:`SpecError` names an entry outside a block, out of (−1, 1)
        or a matrix that is not positive definite."""
        import numpy as np

        iiv = self.iiv_names
        block_of = {n: b for b, block in enumerate(self.omega_blocks) for n in block}
        corr = np.eye(len(iiv))
        for key, value in self.omega_corr.items():
            names = [x.strip() for x in str(key).split("+")]
            if len(names) != 2 or any(n not in block_of for n in names):
                raise SpecError(
                    f"NLME: omega_corr {key!r}: give two parameters of one Ω block as 'A+B' "
                    f"(blocks: {['+'.join(b) for b in self.omega_blocks]})"
                )
            if block_of[names[0]] != block_of[names[1]] or names[0] == names[1]:
                raise SpecError(f"NLME: omega_corr {key!r}: the two are not in one Ω block")
            if not -1.0 < float(value) < 1.0:
                raise SpecError(f"NLME: omega_corr {key!r}: a correlation in (-1, 1), got {value}")
            i, j = iiv.index(names[0]), iiv.index(names[1])
            corr[i, j] = corr[j, i] = float(value)
        if np.any(np.linalg.eigvalsh(corr) <= 1e-10):
            raise SpecError(
                f"NLME: omega_corr {dict(self.omega_corr)}: these correlations do not form a "
                "positive-definite matrix"
            )
        return corr

    def fixed_blocks(self) -> tuple[tuple[str, ...], ...]:
        """Blocks of Ω held whole (every member has ``omega_fixed``)."""
        fixed = {p.name for p in self.params if p.omega_fixed}
        return tuple(b for b in self.omega_blocks if all(n in fixed for n in b))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def omega_blocks(self) -> tuple[tuple[str, ...], ...]:
        """The correlated blocks of Ω (names of parameters with IIV); () when diagonal."""
        iiv = self.iiv_names
        if self.omega == "diagonal":
            return ()
        if self.omega == "full":
            return (iiv,) if len(iiv) > 1 else ()
        if not isinstance(self.omega, str) or not self.omega.strip():
            raise SpecError(
                f"NLME: omega must be 'diagonal', 'full' or blocks like 'CL+V;KA+Q', got "
                f"{self.omega!r}"
            )
        blocks, seen = [], set()
        for part in self.omega.split(";"):
            block = tuple(x.strip() for x in part.split("+") if x.strip())
            for name in block:
                if name not in iiv:
                    raise SpecError(
                        f"NLME: omega block {part.strip()!r}: {name!r} is not a parameter with "
                        f"IIV ({list(iiv)})"
                    )
                if name in seen:
                    raise SpecError(f"NLME: omega blocks: {name!r} is in more than one block")
                seen.add(name)
            if len(block) < 2:
                raise SpecError(
                    f"NLME: omega block {part.strip()!r} needs two or more parameters "
                    "(others are diagonal already)"
                )
            blocks.append(block)
        return tuple(blocks)

    @property
    def iiv_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.iiv)

    def units(self, name: str) -> str:
        """Units of an estimated parameter (given, or the model parameter's)."""
        p = next(p for p in self.params if p.name == name)
        if p.units:
            return p.units
        for q in self.model.parameters:
            if q.name == name:
                return q.units
        return ""

    def covariate_columns(self) -> list[str]:
        return sorted({c.column for p in self.params for c in p.covariates})


def default_params(model: Model, output: str | None = None) -> tuple[Param, ...]:
    """Every positive-default parameter of ``model`` except F/ALAG, log-normal with IIV; with
    ``output``, only those that can change it (:mod:`cohort.models.structure`)."""
    reach = None if output is None else parameters_reaching(model, output)
    return tuple(
        Param(q.name)
        for q in model.parameters
        if q.name not in _NOT_LOGNORMAL and q.default > 0 and not q.name.startswith("D_")
        and (reach is None or q.name in reach)
    )  # fmt: skip


def make_nlme(
    model: Model | str,
    params: Sequence[Param | str] | None = None,
    error: ErrorModel | str = "additive",
    **kwargs,
) -> NLME:
    """Convenience constructor: parameters may be given by name (log-normal with IIV)."""
    ps = tuple(Param(p) if isinstance(p, str) else p for p in (params or ()))
    err = ErrorModel(error) if isinstance(error, str) else error
    return NLME(model=model, params=ps, error=err, **kwargs)
