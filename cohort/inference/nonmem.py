"""NONMEM control streams in: ``cohort fit run.mod`` fits what NONMEM would fit.

pharmpy-core parses the control stream (records, abbreviated code, ``$THETA``/``$OMEGA``/
``$SIGMA`` with bounds and FIX, ``$DATA`` with ``IGNORE``/``ACCEPT``, ``$INPUT`` with DROP);
this module maps what it finds onto cohort's :class:`~cohort.inference.spec.NLME`:

* ``$SUBROUTINES ADVAN1``-``ADVAN4`` with ``TRANS2`` (``TRANS4`` for ADVAN3/4) -> the
  ``pk1_iv``, ``pk1_oral``, ``pk2_iv``, ``pk2_oral`` models (NONMEM's ADVAN4 names ``V2``
  central and ``V3`` peripheral: they become ``V1``/``V2``); the scale ``S1``/``S2`` must be
  the central volume (concentrations in the data's units).
* Each ``$PK`` parameter must be log-normal in NONMEM's usual forms: ``THETA(i)`` or
  ``EXP(THETA(i))`` times covariate terms (``(WT/70)**THETA(j)``, ``WT`` or ``WT/70`` with
  a fixed exponent, ``EXP(THETA(j)*(AGE-40))``, ``IF(APGR.LT.5) TV = TV*(1+THETA(j))``)
  times ``EXP(ETA(k))``; its ``THETA`` initial value and FIX are kept. A reciprocal of that
  form (``KA = 1/MAT`` with ``MAT = THETA(3)*EXP(ETA(3))``) is the same model of ``KA``
  (typical value 1/THETA(3), the ETA negated, covariate exponents negated): fitted as ``KA``,
  with a note saying so.
* ``$OMEGA`` diagonal and ``BLOCK(n)`` structure with their initial variances and
  covariances (as initial correlations), ``FIX`` on a diagonal element or a whole block (held
  at its values), ``0 FIX`` (that random effect off); ``$SIGMA`` with ``$ERROR`` ``Y = F + EPS(1)``
  (additive), ``Y = F + F*EPS(1)`` or ``F*(1+EPS(1))`` (proportional), both (combined), and
  ``Y = LOG(F) + EPS(1)`` (log-transformed data: log-additive; DV, and an ``LLOQ`` column,
  are then log-concentrations as NONMEM requires, read as ``exp(DV)``), or the SD written as THETAs
  with ``$SIGMA 1 FIX``: ``W = SQRT(THETA(a)**2 + (THETA(b)*IPRED)**2)``, ``Y = IPRED +
  W*EPS(1)`` (combined; ``W = THETA(a)`` additive, ``THETA(b)*IPRED`` proportional).

Anything else (``$DES``, other ADVANs, ``IF`` blocks other than the binary covariate, an ETA
on two parameters, some elements of a BLOCK FIXed, ``$SIGMA`` FIXed at a value other than 1,
mixtures, ...) is refused with one error listing every construct that is not supported,
naming the control stream.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pandas as pd

from cohort.errors import CohortError
from cohort.inference.spec import NLME, Covariate, ErrorModel, Param

# (ADVAN, TRANS) -> cohort model, and NONMEM parameter name -> cohort parameter name
_MODELS = {
    (1, 2): ("pk1_iv", {"CL": "CL", "V": "V"}, "S1"),
    (2, 2): ("pk1_oral", {"CL": "CL", "V": "V", "KA": "KA"}, "S2"),
    (3, 4): ("pk2_iv", {"CL": "CL", "V1": "V1", "Q": "Q", "V2": "V2"}, "S1"),
    (4, 4): ("pk2_oral", {"CL": "CL", "V2": "V1", "Q": "Q", "V3": "V2", "KA": "KA"}, "S2"),
}
_ALIASES = {"V": ("V", "VC"), "V1": ("V1", "VC"), "V2": ("V2",), "V3": ("V3", "VP")}
# $PK variables NONMEM reads besides the rate constants: the depot's lag time and
# bioavailability map onto the oral models' ALAG and F; any other (a lag or F on the central
# compartment, modelled rates/durations R/D, more scales, MTIME) is refused by name, never
# dropped (dropping ALAG1 or F1 = 0.5 fitted another model without a word).
_DEPOT = {"ALAG1": "ALAG", "F1": "F"}
_RESERVED = re.compile(r"(ALAG|F|R|D|S)\d+|MTIME\d*|MTDIFF|FO|XSCALE|TSCALE")
_UNSUPPORTED_RECORDS = ("DES", "MODEL", "MIX", "PRIOR", "AES", "INFN", "PRED")


class ControlStreamError(CohortError, ValueError):
    """A control stream cohort cannot fit as NONMEM would; the message lists why."""


@dataclasses.dataclass(frozen=True)
class ControlStream:
    """What a control stream asks for: the model ``spec``, the ``data`` (``$DATA`` read with
    ``$INPUT``, ``IGNORE``/``ACCEPT`` applied), the estimation ``method`` (``ml`` for
    FOCE/FOCE-I/Laplace, ``nuts`` for BAYES/NUTS), the ``source`` path and a ``note`` where
    the estimation differs from the requested one (FO, FOCE without INTERACTION, SAEM, IMP:
    FOCE-I)."""

    spec: NLME
    data: pd.DataFrame
    method: str
    approx: str
    source: Path
    se: str = "hessian"
    note: str = ""  # where cohort's estimation differs from the requested one (said to users)
    # estimate name -> (THETA name, lower, upper) on the estimate's own scale, for $THETA
    # bounds that are finite: cohort estimates without them and checks them afterwards
    bounds: dict[str, tuple[str, float, float]] = dataclasses.field(default_factory=dict)
    # estimates whose THETA enters inverted (KA = 1/MAT): name -> ("reciprocal", c) where the
    # THETA is c/estimate, ("log-reciprocal", c) where it is log(c/estimate), or ("opposite",
    # 1) where it is -estimate (a covariate exponent); their bounds above are the THETA's own
    inverted: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)

    def outside_bounds(self, estimates: dict[str, float]) -> list[str]:
        """Estimates outside their ``$THETA`` bounds, each as a sentence (in the THETA's own
        terms where the estimate is its reciprocal or opposite)."""
        out = []
        for name, (theta, lo, hi) in self.bounds.items():
            v = estimates.get(name)
            if v is None:
                continue
            shown = f"{name} = {v:.6g} ({theta} in $THETA)"
            if name in self.inverted:
                how, c = self.inverted[name]
                if how == "opposite":
                    v_theta = -v
                elif v > 0:
                    v_theta = c / v if how == "reciprocal" else math.log(c / v)
                else:  # (a log-normal estimate is > 0)
                    v_theta = math.nan
                shown, v = f"{theta} in $THETA = {v_theta:.6g} (from {name} = {v:.6g})", v_theta
            if lo <= v <= hi:
                continue
            side = f"below its lower bound {lo:g}" if v < lo else f"above its upper bound {hi:g}"
            out.append(f"{shown} is {side}")
        return out


def read_control_stream(path: str | Path) -> ControlStream:
    """Parse a NONMEM control stream (``.mod``/``.ctl``) into a cohort model and dataset."""
    path = Path(path)
    if not path.is_file():
        raise ControlStreamError(f"no such control stream {str(path)!r}")
    try:
        code = path.read_text(errors="replace")
    except OSError as exc:
        raise ControlStreamError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    problems: list[str] = []
    # Records and subroutines first, on the text: pharmpy may not parse what cohort refuses.
    records = {r.upper() for r in re.findall(r"^\s*\$([A-Za-z]+)", code, flags=re.M)}
    n_problems = len(re.findall(r"^\s*\$PROB\w*", code, flags=re.M | re.I))
    if n_problems > 1:  # the second was ignored while its $COV set the first's SEs (a probe)
        problems.append(
            f"{n_problems} $PROBLEMs in one file (cohort fits one: keep the first problem's "
            "records in a file of their own)"
        )
    for rec in _UNSUPPORTED_RECORDS:
        if any(r.startswith(rec) for r in records):
            problems.append(f"${rec} records")
    advan = re.search(r"\bADVAN(\d+)", code, flags=re.I)
    trans = re.search(r"\bTRANS(\d+)", code, flags=re.I)
    key = (int(advan.group(1)) if advan else 0, int(trans.group(1)) if trans else 1)
    trans1 = key in ((1, 1), (2, 1))  # K = CL/V written out: the same model as TRANS2
    if trans1:
        key = (key[0], 2)
    if key not in _MODELS:
        problems.append(
            f"$SUBROUTINES ADVAN{key[0]} TRANS{key[1]} (supported: ADVAN1/ADVAN2 TRANS2, "
            "ADVAN3/ADVAN4 TRANS4)"
        )
    if problems:
        raise ControlStreamError(_message(path, problems))
    try:
        from pharmpy.modeling import read_model
    except ImportError:  # an optional dependency
        raise ControlStreamError(
            f"{path.name}: reading NONMEM control streams needs pharmpy-core; install it with "
            'pip install "cohort[nonmem]"'
        ) from None
    try:
        model = read_model(str(path))
    except Exception as exc:  # noqa: BLE001 - pharmpy raises many types for bad streams
        raise ControlStreamError(f"{path.name}: not a readable control stream: {exc}") from None
    model_name, names, scale = _MODELS[key]
    try:
        if trans1:
            _check_trans1(model, key[0], problems)
        optional = _DEPOT if model_name.endswith("_oral") else {}
        bounds: dict[str, tuple[str, float, float]] = {}
        volume = _unscaled_volume(model, names, scale)
        flipped: set[str] = set()  # parameters with the ETA negated (KA = 1/MAT)
        notes: list[str] = []
        inverted: dict = {}  # estimates whose THETA enters inverted (KA = 1/MAT)
        params, eta_of, seen = _parameters(
            model, names, scale, problems, optional, bounds, unscaled=volume is not None,
            flipped=flipped, notes=notes, inverted=inverted,
        )  # fmt: skip
        omega = _omega(model, eta_of, params, problems, seen, flipped)
        error = _error(model, problems, volume)
        method, approx, note = _method(model, problems)
        note = "; ".join(n for n in (note, *notes) if n)
    except ControlStreamError:
        raise
    except Exception as exc:  # noqa: BLE001 - sympy/pharmpy on constructs cohort cannot map
        # e.g. a $PK variable set only inside IF blocks, with no default: sympy's "conditions
        # must cover all reals" came out as a 205-line traceback (a probe)
        detail = " ".join(str(exc).split())[:160] or "no detail"
        problems.append(
            f"a $PK/$ERROR construct cohort cannot map to its models ({type(exc).__name__}: "
            f"{detail}); give every variable a value before IF blocks change it, or fit the "
            "data with `cohort fit data.csv --model ...`"
        )
    if problems:
        raise ControlStreamError(_message(path, problems))
    data = _dataset(model, path)
    if error.kind == "log-additive":
        data = _dv_from_log(data, path)
        note = "; ".join(
            n
            for n in (
                note,
                "Y = LOG(F) + EPS(1): DV is read as log-concentrations (NONMEM's convention) "
                "and fitted as exp(DV); estimates, predictions and tables are on the "
                "concentration scale",
            )
            if n
        )
    params = tuple(
        dataclasses.replace(
            p,
            omega=omega["sd"].get(p.name, p.omega),
            omega_fixed=p.name in omega["fixed"],
            iiv=p.iiv and p.name not in omega["zero"],
        )
        for p in params
    )
    data.attrs["nonmem_items"] = True  # its columns mean what $INPUT/$PK say (DUR: a covariate)
    spec = NLME(
        model_name, params=params, error=error, omega=omega["structure"], omega_corr=omega["corr"]
    )
    return ControlStream(
        spec, data, method, approx, path, _standard_errors(code), note, bounds, inverted,
    )  # fmt: skip


def _standard_errors(code: str) -> str:
    """NONMEM's ``$COVARIANCE`` default is the sandwich ``R⁻¹ S R⁻¹``; ``MATRIX=R`` the
    inverse Hessian (also used when there is no ``$COVARIANCE`` record)."""
    record = re.search(r"^\s*\$COV\w*([^$]*)", code, flags=re.M | re.I)
    if record is None or re.search(r"MATRIX\s*=\s*R", record.group(1), flags=re.I):
        return "hessian"
    return "sandwich"


def _message(path: Path, problems: list[str]) -> str:
    return f"{path.name}: cannot fit this control stream as NONMEM would: " + "; ".join(
        dict.fromkeys(problems)
    )


def _sympy(expr):
    import sympy

    return sympy.sympify(str(expr))


def _unscaled_volume(model, names: dict, scale: str):
    """The central volume's expression where ``$PK`` sets no scale (``S1``/``S2``): NONMEM's
    F is then the amount, and ``$ERROR`` may write the concentration as ``A(1)/V`` (pheno_conc,
    mox2: refused as "$PK does not define the scale", a probe). None where a scale is set or
    there is no volume to divide by."""
    statements = model.statements.before_odes
    if statements.find_assignment(scale) is not None:
        return None
    defined = {str(s.symbol) for s in statements}
    central = next(k for k, v in names.items() if v in ("V", "V1"))
    symbol = next((a for a in _ALIASES.get(central, (central,)) if a in defined), None)
    if symbol is None:
        return None
    import sympy

    # $ERROR's expression names V itself (set before the ODEs) or, in full, its definition
    return (sympy.Symbol(symbol), _sympy(statements.full_expression(symbol)))


def _parameters(
    model,
    names: dict,
    scale: str,
    problems: list[str],
    optional: dict,
    bounds: dict,
    unscaled: bool = False,
    flipped: set | None = None,
    notes: list | None = None,
    inverted: dict | None = None,
):
    """One :class:`Param` per structural parameter (and per ``optional`` one $PK defines: a
    number is held fixed), the ETA name each uses, and every ETA their expressions hold (so
    that the ETAs of a parameter refused here are not also reported as unused). A parameter
    written as a reciprocal (``KA = 1/MAT``), or with ``EXP(-ETA)``, is added to ``flipped``
    (its ETA is the negative of the control stream's); a reciprocal's estimates whose
    ``$THETA`` bounds were recorded go into ``inverted``, with a sentence in ``notes``."""
    flipped = set() if flipped is None else flipped
    notes = [] if notes is None else notes
    inverted = {} if inverted is None else inverted
    import sympy

    statements = model.statements.before_odes
    defined = {str(s.symbol) for s in statements}
    from pharmpy.modeling import get_thetas

    thetas = {p.name: p for p in model.parameters}
    # NONMEM's own label THETA(n) (pharmpy names a THETA after its comment, e.g. CL_WT)
    labels = {name: f"THETA({k})" for k, name in enumerate(get_thetas(model).names, 1)}
    eta_names = set(model.random_variables.etas.names)
    columns = set(model.dataset.columns) if model.dataset is not None else set()
    params, eta_of, seen = [], {}, set()
    shared: dict[str, str] = {}  # THETA -> the first parameter using it
    central = next(k for k, v in names.items() if v in ("V", "V1"))
    for nm_name, name in [*names.items(), *optional.items()]:
        symbol = next((a for a in _ALIASES.get(nm_name, (nm_name,)) if a in defined), None)
        if symbol is None:
            if nm_name in names:  # optional ones may be left out
                problems.append(f"$PK does not define {nm_name}")
            continue
        expr = _sympy(statements.full_expression(symbol))
        free = {str(x) for x in expr.free_symbols}
        seen |= free & eta_names
        for theta in sorted(free & set(thetas)):
            # a THETA shared by two parameters (one exponent for CL and V, or V's typical
            # value written through CL's) was estimated twice, once per parameter (a probe)
            other = shared.setdefault(theta, name)
            if other != name:
                problems.append(
                    f"{labels.get(theta, theta)} is used by both {other} and {name}: cohort "
                    "estimates each parameter's typical value and covariate coefficients on "
                    "their own; give each parameter its own THETA"
                )
        if nm_name in optional and expr.is_number:
            # a number is held; ALAG1 = 0 is the model's own default (no lag)
            params.append(Param(name, init=max(float(expr), 1e-12), iiv=False, fixed=True))
            continue
        found: dict = {}
        signs: dict = {}  # EXP(-ETA), and the estimates whose THETA enters inverted
        param, eta = _lognormal(
            name, expr, thetas, eta_names, columns, problems, found, labels, signs
        )
        if signs.get("eta", 1) < 0:  # its ETA is the control stream's negated
            flipped.add(name)
        back = {k: v for k, v in signs.items() if k != "eta"}
        inverted.update(back)
        if name in back:
            own = statements.find_assignment(symbol).expression
            notes.append(
                f"{nm_name} = {own} is fitted as {name}, log-normal with the reciprocal of its "
                f"THETA as typical value{' and the ETA negated' if name in flipped else ''}"
            )
        bounds.update({k: (labels.get(t, t), lo, hi) for k, (t, lo, hi) in found.items()})
        if param is not None:
            params.append(param)
        if eta is not None:
            if eta in eta_of.values():
                problems.append(f"{eta} is used by more than one parameter")
            eta_of[name] = eta
    used = set(optional) | {scale}
    for symbol in sorted(defined):
        if _RESERVED.fullmatch(symbol) and symbol not in used:
            problems.append(f"{symbol} in $PK (not supported)")
    if scale in defined:
        s = _sympy(statements.full_expression(scale))
        v_symbol = next(a for a in _ALIASES.get(central, (central,)) if a in defined)
        v = _sympy(statements.full_expression(v_symbol))
        if sympy.simplify(s - v) != 0:
            problems.append(f"{scale} must be the central volume (got {scale} = {s})")
    elif not unscaled:  # (unscaled: $ERROR must divide the amount by V, see _error)
        problems.append(f"$PK does not define the scale {scale} (e.g. {scale} = V)")
    return params, eta_of, seen


def _lognormal(name, expr, thetas, eta_names, columns, problems, bounds, labels=None, signs=None):
    """``expr`` as a cohort log-normal parameter: typical THETA x covariate effects x
    exp(ETA), each possibly of the opposite sign in the log (``KA = 1/MAT`` with ``MAT =
    THETA(3)*EXP(ETA(3))`` is KA = (1/THETA(3))·exp(−ETA(3)): log-normal too). Returns
    ``(Param or None, eta name or None)``; finite ``$THETA`` bounds go into ``bounds`` (see
    :attr:`ControlStream.bounds`); ``signs`` receives ``"eta": -1`` for an ETA entering as
    EXP(-ETA) and, per estimate whose THETA enters inverted, how to get that THETA back
    (see :attr:`ControlStream.inverted`)."""
    import sympy

    signs = {} if signs is None else signs
    covariates: list[Covariate] = []
    piecewise = list(expr.atoms(sympy.Piecewise))
    for pw in piecewise:
        cov = _binary(pw, thetas, columns)
        if cov is None:
            occasion = _occasion_column(pw, columns)
            in_expr = {str(x) for x in expr.free_symbols} & set(eta_names)
            if occasion is not None and len(in_expr) > 1:  # e.g. VIS3*ETA(4) + VIS8*ETA(5)
                problems.append(
                    f"{name}: inter-occasion variability (ETAs switched by {occasion}) is not "
                    "supported; remove the IOV ETAs to fit without it"
                )
            else:
                problems.append(
                    f"{name}: IF construct on {occasion or 'a data item'} (only "
                    "IF(COV.LT.x) TV=TV*(1+THETA))"
                )
            return None, None
        covariates.append(cov[0])
        _bound(bounds, f"{name}~{cov[0].column}", thetas[cov[2]], cov[2])
        expr = expr.subs(pw, cov[1])
    log_expr = sympy.expand(sympy.expand_log(sympy.log(expr), force=True))
    typical, eta, constant = None, None, 0.0
    effects: dict[str, dict] = {}  # covariate column -> kind, coefficient THETA or fixed value
    offsets: dict[str, float] = {}  # THETA -> the number it multiplies alone (its reference)

    def signed(term, atom) -> int:
        """+1 or -1 where ``term`` is ``atom`` or ``-atom``, else 0."""
        return 1 if term == atom else -1 if term == -atom else 0

    terms = sympy.Add.make_args(log_expr)
    # how many terms each THETA enters: a typical value's THETA enters one; a covariate's
    # coefficient enters its covariate's term and, centred, a term of its own (-THETA from
    # EXP(THETA*(SEX-1))), which is a reference, not a reciprocal typical value (a review)
    uses = {t: sum(sympy.Symbol(t) in term.free_symbols for term in terms) for t in thetas}
    for term in terms:
        free = {str(x) for x in term.free_symbols}
        theta_syms = [x for x in free if x in thetas]
        eta_syms = [x for x in free if x in eta_names]
        cols = [x for x in free if x in columns]
        one_theta = free == set(theta_syms) and len(free) == 1 and uses[theta_syms[0]] == 1
        if not free:
            constant += float(term)
        elif one_theta and signed(term, sympy.log(sympy.Symbol(theta_syms[0]))):
            typical = (
                "natural",
                theta_syms[0],
                signed(term, sympy.log(sympy.Symbol(theta_syms[0]))),
            )
        elif one_theta and signed(term, sympy.Symbol(theta_syms[0])):
            typical = ("log", theta_syms[0], signed(term, sympy.Symbol(theta_syms[0])))
        elif free == set(eta_syms) and len(free) == 1 and signed(term, sympy.Symbol(eta_syms[0])):
            if eta is not None:
                problems.append(f"{name}: more than one ETA ({eta}, {eta_syms[0]})")
            eta = eta_syms[0]
            signs["eta"] = signed(term, sympy.Symbol(eta))
        elif free == set(theta_syms) and len(free) == 1:
            coef = sympy.simplify(term / sympy.Symbol(theta_syms[0]))
            if coef.is_number:  # -THETA*log(ref) (power) or -THETA*ref (exp)
                offsets[theta_syms[0]] = offsets.get(theta_syms[0], 0.0) + float(coef)
            else:
                problems.append(f"{name}: term {term}")
        elif len(cols) == 1 and not eta_syms and free <= {cols[0], *theta_syms}:
            if cols[0] in effects or any(c.column == cols[0] for c in covariates):
                # one effect per column and parameter: a second one replaced the first
                # (WGT**0.75*EXP(THETA(4)*(WGT-1.3)) fitted the exponential alone; a probe)
                problems.append(
                    f"{name}: {cols[0]} enters twice ({_shown(expr, labels)}); cohort fits one "
                    f"effect of a covariate on a parameter: combine them into one term"
                )
                return None, None
            col = sympy.Symbol(cols[0])
            power = sympy.simplify(term / sympy.log(col))
            linear = sympy.simplify(term / col)
            if not power.has(col) and (
                power.is_number or str(-power) in thetas or str(power) in thetas
            ):
                effects[cols[0]] = {"kind": "power", "coef": power}
            elif not linear.has(col) and (str(linear) in thetas or str(-linear) in thetas):
                effects[cols[0]] = {"kind": "exp", "coef": linear}
            else:
                problems.append(f"{name}: covariate term {term}")
        else:
            problems.append(f"{name}: term {term} of {expr}")
    if typical is None:
        problems.append(f"{name}: no typical value THETA in {expr}")
        return None, eta
    for col, e in effects.items():
        coef = e["coef"]
        if coef.is_number:  # a fixed exponent: the numeric constant carries its reference
            fixed = float(coef)
            share = constant / fixed if fixed else 0.0
            constant -= share * fixed
            covariates.append(Covariate(col, "power", ref=round(math.exp(-share), 9), fixed=fixed))
            continue
        sign = 1 if str(coef) in thetas else -1  # (WT/70)**(-THETA(5)), from KA = 1/MAT
        theta = str(sign * coef)
        p = thetas[theta]
        key = f"{name}~{col}"
        if sign > 0:
            _bound(bounds, key, p, theta)
        else:  # the THETA's own bounds; outside_bounds compares -estimate
            _raw_bound(bounds, key, p, theta, typical=False)
            signs[key] = ("opposite", 1.0)
        off = offsets.pop(theta, 0.0) / sign
        ref = math.exp(-off) if e["kind"] == "power" else -off
        init = sign * float(p.init)
        covariates.append(Covariate(col, e["kind"], ref=ref, init=init,
                                    fixed=init if p.fix else None))  # fmt: skip
    for theta in offsets:
        problems.append(f"{name}: {theta} appears without a covariate")
    form, theta, sign = typical
    p = thetas[theta]
    if sign < 0 and any(c.kind == "binary" for c in covariates):
        problems.append(
            f"{name}: an IF covariate on a parameter written as a reciprocal "
            f"({_shown(expr, labels)}); write {name} itself with the IF"
        )
        return None, eta
    value = float(p.init) if form == "natural" else math.exp(float(p.init))
    if not value > 0:
        problems.append(f"{name}: typical value {theta} must start > 0 (log-normal)")
        return None, eta
    init = value**sign * math.exp(constant)  # times a numeric factor left in the typical value
    if sign > 0:
        _bound(bounds, name, p, theta, scale=math.exp(constant), log=form != "natural")
    else:  # 1/THETA: the THETA's own bounds; outside_bounds compares what the estimate gives
        _raw_bound(bounds, name, p, theta, typical=form == "natural")
        signs[name] = ("reciprocal" if form == "natural" else "log-reciprocal", math.exp(constant))
    param = Param(name, init=init, iiv=eta is not None, covariates=tuple(covariates),
                  fixed=bool(p.fix))  # fmt: skip
    return param, eta


def _raw_bound(bounds: dict, name: str, p, theta: str, typical: bool) -> None:
    """The finite ``$THETA`` bounds of ``theta`` as written (for an estimate its THETA enters
    inverted: see :attr:`ControlStream.inverted`); a typical value's implied lower bound 0
    is not recorded."""
    lo, hi = float(p.lower), float(p.upper)
    if p.fix or ((lo <= 0.0 if typical else lo == -math.inf) and hi == math.inf):
        return
    bounds[name] = (theta, lo, hi)


def _occasion_column(pw, columns) -> str | None:
    """The data item a ``Piecewise`` switches on (``IF(VISI.EQ.3)``), or None."""
    import sympy

    for _, cond in pw.args:
        if isinstance(cond, sympy.Rel):  # Eq, Ne, <, ... all are relations
            names = [str(x) for x in cond.free_symbols if str(x) in columns]
            if names:
                return names[0]
    return None


def _binary(pw, thetas, columns):
    """``Piecewise((X*(1+THETA), COV < ref), (X, True))`` -> (binary Covariate, X)."""
    import sympy

    if len(pw.args) != 2 or pw.args[1].cond is not sympy.true:
        return None
    (shifted, cond), (base, _) = pw.args
    if not isinstance(cond, sympy.StrictLessThan) or str(cond.lhs) not in columns:
        return None
    if not cond.rhs.is_number:
        return None
    ratio = sympy.simplify(shifted / base - 1)
    if len(ratio.free_symbols) != 1 or str(ratio) not in thetas:
        return None
    p = thetas[str(ratio)]
    cov = Covariate(str(cond.lhs), "binary", ref=float(cond.rhs), init=float(p.init),
                    fixed=float(p.init) if p.fix else None)  # fmt: skip
    return cov, base, str(ratio)


def _bound(bounds: dict, name: str, p, theta: str, scale: float = 1.0, log: bool = False):
    """Record the finite ``$THETA`` bounds of the estimate ``name`` on its own scale (``scale``
    x THETA, or x exp(THETA) with ``log``); a lower bound 0 on a log-normal typical value is
    implied by the parameterisation and not recorded."""
    lo, hi = float(p.lower), float(p.upper)
    if p.fix:
        return
    if log:
        lo, hi = scale * math.exp(lo) if lo > -math.inf else 0.0, scale * math.exp(hi)
    else:
        lo, hi = scale * lo, scale * hi
    typical = "~" not in name
    if (typical and lo <= 0.0 or not typical and lo == -math.inf) and hi == math.inf:
        return
    bounds[name] = (theta, lo, hi)


def _check_trans1(model, advan: int, problems: list[str]) -> None:
    """ADVAN1/2 TRANS1 reads K: accepted where $PK defines K = CL/V (then CL and V are the
    parameters, as TRANS2 reads them), else refused with the reason."""
    import sympy

    defined = {str(s.symbol) for s in model.statements.before_odes}
    if not {"K", "CL", "V"} <= defined:
        problems.append(
            f"$SUBROUTINES ADVAN{advan} TRANS1 without K = CL/V in $PK (supported: TRANS2, or "
            "TRANS1 with CL, V and K = CL/V)"
        )
        return
    k = sympy.sympify(str(model.statements.before_odes.find_assignment("K").expression))
    if sympy.simplify(k - sympy.Symbol("CL") / sympy.Symbol("V")) != 0:
        problems.append(f"ADVAN{advan} TRANS1 with K = {k} (supported: K = CL/V)")


def _omega(
    model, eta_of, params, problems, seen: set[str] = frozenset(), flipped=frozenset()
) -> dict:
    """Ω structure string, initial SDs (log scale) per parameter, the parameters whose SD is
    FIXed, and the initial correlations within each BLOCK (from its covariances). ETAs in
    ``seen`` (used by a parameter already refused) are not reported again as unused. The
    parameters in ``flipped`` (reciprocals: their ETA is the control stream's negated) take
    the opposite correlation with the others."""
    values = {p.name: p for p in model.parameters}
    by_eta = {eta: name for name, eta in eta_of.items()}
    sd, blocks, fixed, corr, zero = {}, [], set(), {}, set()
    for dist in model.random_variables.etas:
        names = list(dist.names)
        if any(n in seen and n not in by_eta for n in names):
            continue  # its parameter was refused (said there)
        unused = [n for n in names if n not in by_eta]
        if unused:
            problems.append(f"{', '.join(unused)} not used by a structural parameter")
            continue
        variance = dist.variance  # a symbol, or a pharmpy matrix of symbols for a BLOCK
        k = len(names)
        cells = [(i, j) for i in range(k) for j in range(i + 1)]
        pars = {c: values.get(str(variance[c] if k > 1 else variance)) for c in cells}
        if any(p is None for p in pars.values()):
            problems.append(f"$OMEGA for {', '.join(names)}: an element is not a parameter")
            continue
        fix = {c: bool(p.fix) for c, p in pars.items()}
        if k > 1 and any(fix.values()) and not all(fix.values()):
            problems.append(
                f"$OMEGA BLOCK({k}) for {', '.join(names)}: only some elements FIXed (fix "
                "the whole block, or none)"
            )
            continue
        if k == 1 and fix[(0, 0)] and float(pars[(0, 0)].init) == 0.0:
            zero.add(by_eta[names[0]])  # $OMEGA 0 FIX switches the random effect off
            continue
        for i, n in enumerate(names):
            if not float(pars[(i, i)].init) > 0:
                problems.append(
                    f"$OMEGA for {n}: a variance > 0 (or 0 FIX), got {pars[(i, i)].init}"
                )
                continue
            sd[by_eta[n]] = math.sqrt(float(pars[(i, i)].init))
            if fix[(i, i)]:
                fixed.add(by_eta[n])
        if k > 1:
            blocks.append("+".join(by_eta[n] for n in names))
            for i, j in cells:
                if i != j:
                    cov = float(pars[(i, j)].init)
                    r = cov / math.sqrt(float(pars[(i, i)].init) * float(pars[(j, j)].init))
                    if (by_eta[names[i]] in flipped) != (by_eta[names[j]] in flipped):
                        r = -r
                    if r:
                        corr[f"{by_eta[names[j]]}+{by_eta[names[i]]}"] = r
    structure = ";".join(blocks) if blocks else "diagonal"
    return {"structure": structure, "sd": sd, "fixed": fixed, "corr": corr, "zero": zero}


def _error(model, problems, volume=None) -> ErrorModel:
    """Y's residual error as an :class:`ErrorModel`: ``EPS`` (additive), ``F*EPS``
    (proportional), both (combined), ``LOG(F) + EPS`` (log-additive), or the SD written as
    THETAs with ``$SIGMA 1 FIX``: ``W = SQRT(THETA(a)**2 + (THETA(b)*IPRED)**2)``,
    ``Y = IPRED + W*EPS(1)`` (combined; ``W = THETA(a)`` or ``THETA(b)*IPRED`` alone)."""
    import sympy
    from pharmpy.modeling import get_thetas

    labels = {name: f"THETA({k})" for k, name in enumerate(get_thetas(model).names, 1)}
    before = len(problems)

    def shown(expr) -> str:
        return _shown(expr, labels)

    if len(model.dependent_variables) > 1:  # only the first branch's error was fitted
        problems.append(
            f"$ERROR defines {len(model.dependent_variables)} dependent variables (one error "
            "model per DVID); cohort fits one output with one error model: fit each DVID's "
            "records apart"
        )
        return ErrorModel("additive")
    y_symbol = next(iter(model.dependent_variables))
    y = _sympy(model.statements.after_odes.full_expression(y_symbol))
    f_symbol = sympy.Symbol("F")
    eps = {str(e): e for e in map(sympy.Symbol, model.random_variables.epsilons.names)}
    sigma: dict[str, float] = {}
    unit = set()  # EPS with variance 1 FIX: its SD is written in $ERROR
    values = {p.name: p for p in model.parameters}
    for dist in model.random_variables.epsilons:
        name = dist.names[0]
        par = values.get(str(_sympy(dist.variance)))
        if par is not None and par.fix and float(par.init) == 1.0:
            unit.add(name)
        elif par is None or par.fix:
            problems.append(
                f"$SIGMA for {shown(name)} FIXed at a value other than 1 (supported: $SIGMA 1 "
                "FIX with the SD written as THETAs in $ERROR, e.g. W = SQRT(THETA(4)**2 + "
                "(THETA(5)*IPRED)**2) and Y = IPRED + W*EPS(1))"
            )
            continue
        sigma[name] = math.sqrt(float(par.init))
    # the full expression holds F as amount / scale: put the prediction symbol back
    pred = sympy.Symbol("PRED_")
    try:
        f_full = _sympy(model.statements.after_odes.full_expression("F"))
        y = y.subs(f_full, pred)
    except Exception:  # noqa: BLE001 - no F statement: Y is written with F itself
        pass
    y = y.subs(f_symbol, pred)
    if volume is not None:  # no scale: F is the amount; the concentration is F over V
        conc = sympy.Symbol("CONC_")
        y = sympy.expand(y)
        for v in volume:
            y = y.subs(pred / v, conc)
        if pred in y.free_symbols:
            problems.append(
                "$PK defines no scale (S1/S2) and $ERROR uses the amount F itself: define the "
                "scale (e.g. S1 = V), or write the concentration as A(1)/V"
            )
            return ErrorModel("additive")
        y = y.subs(conc, pred)
    y = _prediction_written_out(model, y, pred)
    terms = sympy.Add.make_args(sympy.expand(y))
    add, prop, log = None, None, False
    for t in terms:
        names = {str(s) for s in t.free_symbols}
        e = [n for n in names if n in eps]
        if not e:
            if t == pred:
                continue
            if t == sympy.log(pred):
                log = True
                continue
            problems.append(f"$ERROR term {shown(t)}")
            continue
        rest = sympy.simplify(t / sympy.Symbol(e[0]))
        if e[0] not in unit and e[0] not in sigma:
            continue  # its $SIGMA was refused above
        if e[0] in unit:
            sds = _theta_sds(rest, pred, values)
            if isinstance(sds, str):
                problems.append(f"$ERROR: {_shown(sds, labels)} in W (the residual SD)")
                continue
            if sds is None:
                problems.append(
                    f"$ERROR term {shown(t)} with $SIGMA 1 FIX (supported: W*EPS with W = "
                    "THETA(a), THETA(b)*IPRED or SQRT(THETA(a)**2 + (THETA(b)*IPRED)**2))"
                )
                continue
            # several EPS terms each give a part (THETA(5)*EPS(1) + THETA(6)*IPRED*EPS(2))
            for part, value in zip(("additive", "proportional"), sds, strict=True):
                if value is None:
                    continue
                if (add if part == "additive" else prop) is not None:
                    problems.append(f"$ERROR: two {part} error terms (one of each is supported)")
                elif part == "additive":
                    add = value
                else:
                    prop = value
        elif rest == 1 and add is None:
            add = sigma[e[0]]
        elif rest == pred and prop is None:
            prop = sigma[e[0]]
        else:
            problems.append(
                f"$ERROR term {shown(t)} (supported: EPS, IPRED*EPS, or W*EPS with $SIGMA 1 FIX "
                "and W = SQRT(THETA(a)**2 + (THETA(b)*IPRED)**2))"
            )
    if log:
        if add is None or prop is not None:
            problems.append("$ERROR with LOG(F): only Y = LOG(F) + EPS(1) is supported")
        return ErrorModel("log-additive", add=add)
    if add is not None and prop is not None:
        return ErrorModel("combined", add=add, prop=prop)
    if prop is not None:
        return ErrorModel("proportional", prop=prop)
    if add is not None:
        return ErrorModel("additive", add=add)
    if len(problems) == before:  # not when a term was refused above
        problems.append(f"$ERROR: no residual error in Y = {shown(y)}")
    return ErrorModel("additive")


def _theta_sds(w, pred, values) -> tuple[float | None, float | None] | str | None:
    """``(additive SD, proportional SD)`` initial values from ``W`` written with THETAs (None
    for a part W does not have, or whose THETA is fixed at 0: the usual way to keep one part
    of the combined template), None when W has another form, or the reason as text for a
    THETA fixed elsewhere (a fixed residual SD is not supported). A zero guard on W (``IF
    (W.EQ.0) W = 1``) is read as W."""
    import sympy

    for pw in w.atoms(sympy.Piecewise):
        w = w.subs(pw, pw.args[-1].expr)
    square = sympy.expand(w**2)
    try:
        poly = sympy.Poly(square, pred)
    except sympy.PolynomialError:
        return None
    if poly.degree() > 2 or poly.coeff_monomial(pred) != 0:
        return None
    out = []
    for coef in (poly.coeff_monomial(1), poly.coeff_monomial(pred**2)):
        if coef == 0:
            out.append(None)
            continue
        base, power = coef.as_base_exp()
        par = values.get(str(base))
        if power != 2 or par is None:
            return None
        if par.fix:
            if float(par.init) != 0.0:
                return f"{base} FIXed at {float(par.init):g} (fixed residual SDs are not supported)"
            out.append(None)
            continue
        out.append(abs(float(par.init)))
    return (out[0], out[1]) if any(v is not None for v in out) else None


def _shown(expr, labels: dict[str, str] | None = None) -> str:
    """An expression in the control stream's own names (pharmpy's THETA_4 or a THETA named
    after its comment, EPS_1, and cohort's prediction symbol PRED_ read THETA(4), EPS(1), F)."""
    text = str(expr).replace("PRED_", "F")
    for name, label in sorted((labels or {}).items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf"\b{re.escape(name)}\b", label, text)
    return re.sub(r"\b(THETA|ETA|EPS)_(\d+)\b", r"\1(\2)", text)


def _prediction_written_out(model, y, pred):
    """``Y`` with the prediction in the forms NONMEM users write it put back as ``pred``:
    ``IPRED = A(2)/V`` (the central amount over the scale's volume, F by another name), a
    zero-guarded ``IF (IPRED.EQ.0) IPRED = tiny`` used as the proportional error's factor, and
    a log guarded for F <= 0 (``IPRED = LOG(.025)`` then ``IF (F.GT.0) IPRED = LOG(F)``: where
    F is 0 the fit names the records, as for any zero prediction under log-additive error)."""
    import sympy

    amounts = [a for a in y.atoms(sympy.Function) if str(a).startswith("A_CENTRAL")]
    statements = model.statements.before_odes
    for scale in ("S1", "S2"):
        assignment = statements.find_assignment(scale)
        if assignment is not None:
            volume = _sympy(assignment.expression)
            for amount in amounts:
                y = y.subs(amount / volume, pred)

    def guarded(e) -> bool:
        if not isinstance(e, sympy.Piecewise) or len(e.args) != 2:
            return False
        (tiny, cond), (value, other) = e.args
        return value == pred and other is sympy.true and tiny.is_number and abs(float(tiny)) < 1e-6

    def log_guarded(e) -> bool:  # IPRED = LOG(.025); IF (F.GT.0) IPRED = LOG(F) (a probe)
        if not isinstance(e, sympy.Piecewise) or len(e.args) != 2:
            return False
        (value, cond), (floor, other) = e.args
        guard = (
            isinstance(cond, sympy.StrictGreaterThan | sympy.GreaterThan)
            and cond.lhs == pred
            and cond.rhs.is_number
            and abs(float(cond.rhs)) < 1e-6
        )
        return value == sympy.log(pred) and guard and other is sympy.true and floor.is_number

    y = y.replace(guarded, lambda e: pred)
    return y.replace(log_guarded, lambda e: sympy.log(pred))


def _method(model, problems) -> tuple[str, str, str]:
    """``(method, approximation, note)``: what cohort runs for the last ``$ESTIMATION`` and,
    where that is not exactly what NONMEM would run, a note saying so (shown to the user)."""
    steps = model.execution_steps
    if len(steps) == 0:
        return "ml", "foce", ""
    step = steps[-1]
    method = str(step.method).upper()
    interaction = bool(getattr(step, "interaction", True))
    instead = "cohort runs FOCE with INTERACTION (FOCE-I), so the OFV and estimates are FOCE-I's"
    if method == "LAPLACE" or getattr(step, "laplace", False):
        return "ml", "laplace", ""
    if method == "FOCE":
        note = "" if interaction else f"$ESTIMATION METHOD=1 without INTERACTION: {instead}"
        return "ml", "foce", note
    if method == "FO":
        return "ml", "foce", f"$ESTIMATION METHOD=0 (FO) is not available: {instead}"
    if method in ("BAYES", "NUTS"):
        return "nuts", "foce", f"$ESTIMATION METHOD={method}: cohort samples with NUTS"
    if method in ("ITS", "SAEM", "IMP", "IMPMAP"):
        # the same maximum-likelihood target, approximated by FOCE-I here
        return "ml", "foce", f"$ESTIMATION METHOD={method} is not available: {instead}"
    problems.append(f"$ESTIMATION METHOD={method}")
    return "ml", "foce", ""


def _dv_from_log(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The observations' DV (and an ``LLOQ`` column) as concentrations, ``exp(DV)``. NONMEM's
    ``Y = LOG(F) + EPS(1)`` compares log F with DV as given, so DV must be log-transformed
    in the dataset; cohort's log-additive error takes concentrations and compares their logs.
    Reading the same DV unchanged fitted log(log(conc)) (a probe: CL 112 for a true 3, or
    every DV < 0 refused as "not > 0")."""
    import numpy as np

    cols = {str(c).upper(): c for c in frame.columns}
    if "DV" not in cols:
        return frame  # the reader names the missing column

    def number(name, missing):
        return pd.to_numeric(frame[cols[name]], errors="coerce").fillna(missing).to_numpy()

    if "EVID" in cols:
        obs = number("EVID", 0.0) == 0
    else:
        obs = number("AMT", 0.0) == 0 if "AMT" in cols else np.ones(len(frame), bool)
    if "MDV" in cols:
        obs &= number("MDV", 0.0) == 0
    dv = pd.to_numeric(frame[cols["DV"]], errors="coerce").to_numpy(dtype=float)
    logged = obs & np.isfinite(dv)
    too_large = np.flatnonzero(logged & (dv > 700.0))
    if too_large.size:
        i = int(too_large[0])
        raise ControlStreamError(
            f"{path.name}: $ERROR Y = LOG(F) + EPS(1) takes DV as log-concentrations (NONMEM), "
            f"but data record {i + 1} has DV {dv[i]:g}: give log(concentration) in DV, or "
            "an $ERROR for untransformed DV (e.g. Y = F + F*EPS(1))"
        )
    out = frame.copy()
    out[cols["DV"]] = np.where(logged, np.exp(np.where(logged, dv, 0.0)), dv)
    if "LLOQ" in cols:  # on DV's scale (BLQ rows usually carry DV = LLOQ)
        lloq = pd.to_numeric(frame[cols["LLOQ"]], errors="coerce").to_numpy(dtype=float)
        out[cols["LLOQ"]] = np.exp(np.minimum(lloq, 700.0))
    return out


def _dataset(model, path: Path) -> pd.DataFrame:
    """``$DATA`` as read by pharmpy (``$INPUT`` names, IGNORE/ACCEPT applied), DROPped
    columns removed."""
    try:
        frame = model.dataset
    except Exception as exc:  # noqa: BLE001
        raise ControlStreamError(f"{path.name}: cannot read $DATA: {exc}") from None
    if frame is None:
        named = re.search(r"^\s*\$DATA\s+(\S+)", path.read_text(errors="replace"), re.M | re.I)
        which = f" ({named.group(1)}, relative to {path.resolve().parent})" if named else ""
        raise ControlStreamError(f"{path.name}: $DATA names no readable file{which}")
    drop = [c.name for c in model.datainfo if c.drop and c.name in frame.columns]
    frame = frame.drop(columns=drop).reset_index(drop=True)
    # NONMEM's synonyms (``$INPUT ... CP=DV``): pharmpy keeps the label (CP) and types the
    # column; the reader looks for NONMEM's reserved names, so give the column that name
    reserved = {"id": "ID", "idv": "TIME", "dv": "DV", "dose": "AMT"}
    names = {c.name: reserved[c.type] for c in model.datainfo if c.type in reserved}
    rename = {
        label: name
        for label, name in names.items()
        if label in frame.columns and label != name and name not in frame.columns
    }
    return frame.rename(columns=rename)
