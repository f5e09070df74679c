"""``cohort fit``: fit an NLME model to a NONMEM-style CSV."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from cohort._seed import MAX_SEED
from cohort.cli._common import command, console, err_console, fail, warn
from cohort.cli._fit_table import estimates_table


def _covariates(specs: list[str] | None, names: list[str]) -> dict:
    """``PARAM~COLUMN[:kind[:ref[:value]]]`` options grouped by parameter."""
    from cohort.inference import Covariate, SpecError

    out: dict[str, list] = {}
    for text in specs or []:
        head, _, rest = text.partition(":")
        param, sep, column = head.partition("~")
        if not sep or not column:
            fail(
                f"--covariate {text!r}: use PARAM~COLUMN[:kind[:ref[:value]]], e.g. CL~WT:power:70"
            )
        if param not in names:
            fail(f"--covariate {text!r}: {param!r} is not an estimated parameter ({names})")
        parts = rest.split(":") if rest else []
        try:
            kind = parts[0] if parts and parts[0] else "power"
            ref = float(parts[1]) if len(parts) > 1 and parts[1] else None
            fixed = float(parts[2]) if len(parts) > 2 and parts[2] else None
            cov = Covariate(column, kind=kind, ref=ref, fixed=fixed)
        except SpecError as exc:
            fail(f"--covariate {text!r}: {exc}")
        except ValueError:  # float(): name the part, not Python's wording
            fail(
                f"--covariate {text!r}: the reference and the fixed coefficient are numbers "
                "(PARAM~COLUMN:kind:ref:value, e.g. CL~WT:power:70:0.75)"
            )
        out.setdefault(param, []).append(cov)
    return out


def _inits(
    specs: list[str] | None, names: list[str], flag: str = "--init"
) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, float], dict]:
    """``--init NAME=VALUE`` (typical value), ``--init omega_NAME=SD`` (IIV, log-scale SD),
    ``--init A+B=R`` (initial correlation of A and B in one Ω block), ``--init
    sigma_add=SD`` / ``sigma_prop=SD`` (residual error) and ``--init PARAM~COLUMN=VALUE`` (a
    ``--covariate``'s coefficient, as the fit table names it; any sign); ``--fix`` takes the
    same forms but sigma and correlations, VALUE optional (then the ``--init`` value is
    held)."""
    out: dict[str, dict[str, float]] = {}
    corr: dict[str, float] = {}
    sigma: dict[str, float] = {}
    effects: dict[tuple[str, str], float | None] = {}
    for text in specs or []:
        key, sep, value = text.partition("=")
        key = key.strip()
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if "~" in key:
            param, _, column = key.partition("~")
            if flag == "--fix" and not sep:
                number = None
            elif not sep or not np.isfinite(number):
                fail(f"{flag} {text!r}: use PARAM~COLUMN=VALUE, e.g. {flag} CL~WT=0.75")
            effects[(param.strip(), column.strip())] = number
            continue
        if key in ("sigma_add", "sigma_prop"):
            if flag == "--fix":
                fail(f"--fix {text!r}: residual SDs are estimated; give --init {key}=SD")
            if not sep or not number > 0:
                fail(f"{flag} {text!r}: use {key}=SD with SD > 0, e.g. {flag} {key}=0.1")
            sigma[key[6:]] = number
            continue
        if "+" in key:
            if flag == "--fix":
                fail(f"--fix {text!r}: correlations are held by fixing a whole Ω block (--fix "
                     "omega_A --fix omega_B ... for every parameter of the block)")  # fmt: skip
            if not sep or not -1 < number < 1:
                fail(f"{flag} {text!r}: a correlation A+B=R with -1 < R < 1, e.g. CL+V=0.3")
            corr[key] = number
            continue
        if flag == "--fix" and not sep:
            number = None
        elif not sep or not number > 0:
            fail(f"{flag} {text!r}: use NAME=VALUE with VALUE > 0, e.g. {flag} CL=2.5")
        field, name = ("omega", key[6:]) if key.startswith("omega_") else ("init", key)
        if name not in names:
            fail(f"{flag} {text!r}: {name!r} is not an estimated parameter ({names})")
        out.setdefault(name, {})[field] = number
    return out, corr, sigma, effects


def _with_coefficients(covs: dict, inits: dict, held: dict) -> dict:
    """``covs`` with the ``--init``/``--fix PARAM~COLUMN`` values set on their covariates (a
    ``--fix`` without a value holds the ``--init`` one)."""
    import dataclasses

    for flag, given in (("--init", inits), ("--fix", held)):
        for (param, column), value in given.items():
            matches = [c for c in covs.get(param, ()) if c.column.upper() == column.upper()]
            if not matches:
                fail(
                    f"{flag} {param}~{column}: there is no covariate {param}~{column} to start "
                    f"or hold; add it with --covariate {param}~{column} (e.g. :power:70)"
                )
            if flag == "--fix":
                value = value if value is not None else inits.get((param, column))
                if value is None:
                    fail(f"--fix {param}~{column}: give the value to hold, e.g. =0.75")
            field = "init" if flag == "--init" else "fixed"
            covs[param] = [
                dataclasses.replace(c, **{field: value}) if c in matches else c for c in covs[param]
            ]
    return covs


def _fixed(
    fix: list[str] | None, names: list[str], inits: dict[str, dict[str, float]]
) -> tuple[dict[str, dict], dict]:
    """Param fields from ``--fix NAME[=VALUE]`` / ``--fix omega_NAME[=SD]``: the value held
    (given here, else the ``--init`` value; a typical value needs one), and the ``--fix
    PARAM~COLUMN[=VALUE]`` coefficients as :func:`_inits` reads them."""
    values, _, _, effects = _inits(fix, names, "--fix")
    out: dict[str, dict] = {}
    for name, fields in values.items():
        for field, value in fields.items():
            value = value if value is not None else inits.get(name, {}).get(field)
            entry = out.setdefault(name, {})
            if field == "init":
                if value is None:
                    fail(f"--fix {name}: give the value to hold, e.g. --fix {name}=2.5")
                entry.update(init=value, fixed=True)
            else:
                entry.update(omega_fixed=True, **({"omega": value} if value else {}))
    return out, effects


def _spec(
    model_name: str,
    params: str | None,
    iiv: str | None,
    error: str,
    omega: str,
    covariate: list[str] | None,
    init: list[str] | None = None,
    fix: list[str] | None = None,
    output: str | None = None,
):
    from cohort.inference import NLME, ErrorModel, Param, SpecError
    from cohort.inference.spec import default_params
    from cohort.models import get as get_model

    try:
        model = get_model(model_name)
    except KeyError as exc:
        fail(str(exc))
    added: list[str] = []  # held by --fix alone: no random effect unless --iiv names it
    target = output or model.output_names[0]
    reach = default_params(
        model, target if target in model.output_names + model.state_names else None
    )
    if params:
        names = [p.strip() for p in params.split(",")]
        # a model parameter held by --fix NAME=VALUE is fitted as fixed: it was refused as
        # "not among the estimated", so a user's own PK values could not be given (a probe)
        for item in fix or ():
            name = item.split("=", 1)[0].strip()
            if name in model.parameter_names and name not in names and "=" in item:
                names.append(name)
                added.append(name)
        held = [q for q in reach if q.name not in names]
        if held:  # said, as without --params (they were held without a word)
            default = {q.name: q for q in model.parameters}
            shown = ", ".join(
                f"{q.name} {default[q.name].default:g} {default[q.name].units}".removesuffix(" 1")
                for q in held
            )
            err_console.print(
                f"note: {shown} can change {target!r} but are not in --params: held at "
                f"{model.name}'s values (--fix NAME=VALUE holds another value)"
            )
    else:
        names = [p.name for p in reach]
        held = [p.name for p in default_params(model) if p.name not in names]
        if held:
            err_console.print(
                f"note: {', '.join(held)} cannot change {target!r} (the fitted output): not "
                f"estimated, held at {model.name}'s values; --output names another output"
            )
    with_iiv = set(p.strip() for p in iiv.split(",")) if iiv else set(names) - set(added)
    unknown = with_iiv - set(names)
    if unknown:
        fail(f"--iiv: {sorted(unknown)} are not among the estimated parameters {names}")
    inits, corr, sigma, init_effects = _inits(init, names)
    held, held_effects = _fixed(fix, names, inits)
    covs = _with_coefficients(_covariates(covariate, names), init_effects, held_effects)
    try:
        ps = tuple(
            Param(
                n,
                iiv=n in with_iiv,
                covariates=tuple(covs.get(n, ())),
                **{**inits.get(n, {}), **held.get(n, {})},
            )
            for n in names
        )
        err = ErrorModel(error, **sigma)
        extra = [f"sigma_{k}" for k in sigma if k not in err.components]
        if extra:
            fail(f"--init {extra[0]}: the {error} error model has no such SD "
                 f"({', '.join('sigma_' + c for c in err.components)})")  # fmt: skip
        return NLME(model=model, params=ps, error=err, omega=omega,
                    omega_corr=corr, output=output)  # fmt: skip
    except SpecError as exc:
        fail(str(exc))


_UNUSED = {"nuts": ("steps", "guide", "se"), "svi": ("chains", "warmup", "se"),
           "ml": ("chains", "warmup", "steps", "guide")}  # fmt: skip


def _estimates(result) -> dict[str, float]:
    s = result.summary
    return {str(k): float(v) for k, v in s["estimate"].items()}


def _refuse_contradictions(ctx, method: str, approx_given: bool, init, fix) -> None:
    """Options that would be silently ignored: settings of another method (a NUTS run given
    --approx ran its 4 x (1000 + 1000) default), and a held value given twice (--fix CL=2 with
    --init CL=3 dropped the --init without a word)."""
    for name in _UNUSED[method]:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            fail(f"--{name} has no effect with --method {method}; remove it")
    if approx_given and method != "ml":
        fail(f"--approx sets the ML fit's approximation; it has no effect with --method {method}")

    def values(items) -> dict[str, str]:  # each item one NAME=VALUE, as _inits reads them
        out = {}
        for text in items or ():
            key, sep, value = str(text).partition("=")
            if sep:
                out[key.strip()] = value.strip()
        return out

    inits, fixed = values(init), values(fix)
    both = [k for k in fixed if k in inits]
    if both:
        k = both[0]
        fail(
            f"--fix {k}={fixed[k]} and --init {k}={inits[k]} both set {k}; give the value once "
            f"(--fix {k} holds it at its --init)"
        )


@command(timed=True)
def fit(
    ctx: typer.Context,
    data: Path = typer.Argument(
        ...,
        help="NONMEM-style CSV (ID TIME DV AMT EVID CMT ...), or a NONMEM control stream "
        "(.mod/.ctl: model, initial estimates, Ω blocks, error model and $DATA from it)",
    ),
    model: str = typer.Option(None, help="model name (see `cohort models`) [default: pk1_oral]"),
    output: str = typer.Option(
        None,
        help="the model output DV observes, e.g. response for a PD fit (its observations' "
        "CMT must point to it) [default: the model's first output, conc]",
    ),
    method: str = typer.Option(
        None,
        help="nuts | svi | ml (foce, laplace: ml with that approximation) [default: nuts; a "
        "control stream's $ESTIMATION]",
    ),
    out: Path = typer.Option(Path("fit.nc"), "--out", "-o", help="result file (.nc or .zarr)"),
    report: Path = typer.Option(None, help="directory for GOF/VPC/individual plots and CSVs"),
    params: str = typer.Option(None, help="estimated parameters, e.g. CL,V,KA (default: all)"),
    iiv: str = typer.Option(None, help="parameters with random effects (default: all)"),
    covariate: list[str] = typer.Option(
        None,
        help="covariate effect PARAM~COLUMN[:power|exp|binary[:ref[:value]]] (repeatable; "
        "binary with ref: 1 where COLUMN < ref, e.g. V~APGR:binary:5; a value holds the "
        "coefficient fixed, e.g. CL~WT:power:70:0.75)",
    ),
    error: str = typer.Option(
        None, help="additive | proportional | combined | log-additive [default: additive]"
    ),
    omega: str = typer.Option(
        None,
        help="diagonal | full | blocks like CL+V (a BLOCK(2) for CL, V; others diagonal) or "
        "CL+V;KA+Q (ML only) [default: diagonal]",
    ),
    chains: int = typer.Option(4, help="NUTS chains"),
    warmup: int = typer.Option(1000, help="NUTS warmup iterations per chain"),
    draws: int = typer.Option(1000, help="posterior draws per chain (SVI: in total)"),
    steps: int = typer.Option(10_000, help="SVI optimisation steps"),
    guide: str = typer.Option("multivariate", help="SVI guide: normal | multivariate | lowrank"),
    approx: str = typer.Option(
        None, help="ML approximation: foce | laplace [default: foce; a control stream's]"
    ),
    se: str = typer.Option(
        None,
        help="ML standard errors: hessian | sandwich | none [default: hessian; a control "
        "stream's $COVARIANCE: sandwich unless MATRIX=R]",
    ),
    init: list[str] = typer.Option(
        None,
        help="initial estimate NAME=VALUE, omega_NAME=SD, A+B=R (correlation in an Ω block), "
        "sigma_add=SD, sigma_prop=SD or PARAM~COLUMN=VALUE (a --covariate's coefficient) "
        "(repeatable; default: a scan of the pooled objective)",
    ),
    fix: list[str] = typer.Option(
        None,
        help="hold NAME[=VALUE] (typical value), omega_NAME[=SD] or PARAM~COLUMN[=VALUE] at "
        "that value or its --init (repeatable; fixing every SD of an Ω block holds its "
        "correlations too)",
    ),
    starts: int = typer.Option(3, help="ML: fits from this many of the best initial candidates"),
    dvid: str = typer.Option(
        None, help="fit only the observations of this DVID (a PK/PD file's concentrations, say)"
    ),
    allow_unconverged: bool = typer.Option(
        False, help="exit 0 even when the fit did not converge or landed in a flip-flop mode"
    ),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="random seed"),
    overwrite: bool = typer.Option(False, help="replace an existing --out/--report by cohort"),
):
    """Fit a population model (ML, NUTS or SVI) and write estimates, EBEs and diagnostics."""
    from cohort.devices import host_devices_for_chains

    approx_given = approx is not None  # by the user (a control stream's comes later)
    stream = None
    if data.suffix.lower() in (".mod", ".ctl"):
        stream = _control_stream(data, model=model, params=params, iiv=iiv, error=error,
                                 omega=omega, covariate=covariate, init=init,
                                 fix=fix, output=output)  # fmt: skip
        method = method or stream.method
        approx = approx or stream.approx
        se = se or stream.se
    method = (method or "").strip().lower() or None
    if method in ("foce", "focei", "foce-i", "laplace"):  # NONMEM's names for the ML fits
        approx = approx or ("laplace" if method == "laplace" else "foce")
        method = "ml"
    if method in ("saem", "fo", "imp", "its"):
        fail(
            f"--method {method}: not available; --method ml fits the same maximum-likelihood "
            "problem by FOCE-I (--approx laplace for Laplace)"
        )
    method, approx, se = method or "nuts", approx or "foce", se or "hessian"
    if method == "nuts":
        host_devices_for_chains(chains)
    from cohort.dosing import DosingError
    from cohort.inference import SpecError
    from cohort.inference import fit as run_fit
    from cohort.store import check_replaceable, report_directory

    if method not in ("nuts", "svi", "ml"):
        fail(f"--method must be nuts, svi or ml; got {method!r}")
    if out.suffix not in (".nc", ".zarr"):
        fail(f"--out {out}: use a .nc (netCDF) or .zarr path")
    if not data.is_file():
        fail(f"no such file {data}")
    for flag, value in (("--chains", chains), ("--draws", draws), ("--steps", steps)):
        if value < 1:
            fail(f"{flag} must be >= 1, got {value}")
    _refuse_contradictions(ctx, method, approx_given, init, fix)
    if warmup < 0:
        fail(f"--warmup must be >= 0, got {warmup}")
    # Checked before the fit, so a fit is never computed only to be refused at the end.
    check_replaceable(out, overwrite=overwrite)
    if report is not None:
        report_directory(report, overwrite=overwrite, flag="--report")
    if starts < 1:
        fail(f"--starts must be >= 1, got {starts}")
    if stream is None:
        spec = _spec(model or "pk1_oral", params, iiv, error or "additive",
                     omega or "diagonal", covariate, init, fix, output)  # fmt: skip
        _note_dose_compartment(data, spec.model, given=model is not None)
    else:
        spec, data = stream.spec, stream.data
        console.print(
            f"control stream {escape(stream.source.name)}: {spec.model.name}, "
            f"{', '.join(spec.names)} (IIV: {', '.join(spec.iiv_names)}), Ω {spec.omega}, "
            f"{spec.error.kind} error, {method} ({approx}); {len(data)} records from $DATA"
        )
        if stream.note:
            warn(stream.note)
    t0 = time.perf_counter()
    with console.status(f"fitting {spec.model.name} ({method})") as status:

        def progress(stage: str) -> None:
            # elapsed time and stage (console.log also printed "fit.py:248" on every line)
            console.print(f"{time.perf_counter() - t0:7.1f} s  {escape(stage)}", style="dim")
            status.update(f"fitting {spec.model.name}: {stage}")

        # CohortWarnings (e.g. "did not converge") go to stderr through @command as raised
        try:
            result = run_fit(
                spec,
                data,
                method,
                chains=chains,
                warmup=warmup,
                draws=draws,
                steps=steps,
                guide=guide,
                approx=approx,
                se=se,
                seed=seed,
                progress=progress,
                starts=starts,
                dvid=dvid,
            )
        except (DosingError, SpecError, ValueError) as exc:
            status.stop()
            fail(str(exc))
    console.print(_table(result))
    d = result.diagnostics
    shrink = result.shrinkage()
    d.update({f"shrinkage_{k}": round(v, 2) for k, v in shrink.items()})
    if shrink:
        etas = [f"{k[4:]} {v:.1f} %" for k, v in shrink.items() if k.startswith("eta_")]
        eps = f"; ε {shrink['eps']:.1f} %" if "eps" in shrink else ""
        console.print(f"shrinkage (SD, as NONMEM's ETASHRINKSD): η {', '.join(etas)}{eps}")
    trouble = []
    if method == "nuts" and "max_r_hat" in d:
        failed = list(d.get("problems", []))
        ess_gate = 100 * chains  # Gates(): bulk and tail ESS >= 100 per chain
        verdict = "[bold red]NOT converged[/]" if failed else "[bold green]converged[/]"
        console.print(
            f"NUTS verdict: {verdict} — max R-hat {d['max_r_hat']:.3f} (gate < 1.01), min bulk ESS "
            f"{d['min_ess_bulk']:.0f} (gate >= {ess_gate}), {d['divergences']} divergences "
            "(gate 0)"
        )
        if failed:
            trouble.append("NUTS gates failed: " + "; ".join(map(str, failed)))
    if d.get("converged", 1) == 0:
        trouble.append(f"the optimiser did not converge ({d.get('message', '')})")
    if d.get("svi_converged", 1) == 0:
        trouble.append("SVI did not converge in --steps (see the warning above): raise --steps")
    if result.ofv is not None and not np.isfinite(result.ofv):
        trouble.append("the objective (OFV) is not finite: the estimates are not a fit")
    # (standard errors that could not be computed are warned about by the fit itself)
    if d.get("beyond_plausible"):
        trouble.append(f"{d['beyond_plausible']} is outside its plausible range")
    if stream is not None and (outside := stream.outside_bounds(_estimates(result))):
        # NONMEM keeps THETA inside its bounds; cohort estimates without them, so an estimate
        # outside is not what NONMEM would report: said, and the fit not accepted
        trouble.append(
            f"{'; '.join(outside)}: cohort estimates without bounds (NONMEM would stop at the "
            "bound); widen the bound if the estimate is plausible, or fix the parameter"
        )
    if d.get("zero_predictions"):
        trouble.append(
            f"observations are predicted as 0 under {result.bound.spec.error.kind} error "
            "(see above)"
        )
    if d.get("ka_below_elimination"):
        trouble.append("the estimate is the flip-flop mode (KA below CL/V)")
    elif d.get("mirror_ofv", float("inf")) < (result.ofv or 0.0) - 0.1 and not d.get(
        "mirror_degenerate", 0
    ):
        trouble.append("the flip-flop mode (KA below CL/V) fits better than the estimate")
    # the verdict travels with the result (`cohort info`): a fit refused here is not
    # stored as if it had been accepted
    result.diagnostics["verdict"] = "rejected: " + "; ".join(trouble) if trouble else "accepted"
    path = result.save(out, overwrite=overwrite)
    line = f"{method} fit in {time.perf_counter() - t0:.1f} s -> [bold]{escape(str(path))}[/]"
    if result.ofv is not None:
        line += f"   OFV {result.ofv:.3f} (−2LL without N·log 2π)"
    console.print(line)
    if "starts" in d:
        where = (
            f"{d['candidates']} candidates of the pooled objective scanned"
            if d.get("candidates")
            else "the given initial estimates (runs from them, and after a pooled pre-fit)"
        )
        defaults = (
            " (the model's defaults among them: the scan's starts ended outside the plausible "
            "range)"
            if d.get("defaults_tried")
            else ""
        )
        console.print(
            f"initial estimates: {where}; {d['starts_agreeing']} of {d['starts']} starts "
            f"reached the best OFV{defaults}"
        )
    if "mirror_ofv" in d:
        console.print(
            f"flip-flop check: the mirrored mode (KA <-> CL/V) reaches OFV {d['mirror_ofv']:.3f}"
        )
    if report is not None:
        from cohort.inference import plots

        files = plots.report(result, report, overwrite=overwrite)
        console.print("report: " + ", ".join(str(f) for f in files))
    if trouble and not allow_unconverged:
        err_console.print(
            f"[bold red]error:[/] {escape('; '.join(trouble))}; the results are saved in "
            f"{escape(str(path))} for inspection (--allow-unconverged to exit 0)",
            soft_wrap=True,
        )
        raise typer.Exit(code=1)


def _note_dose_compartment(path: Path, model, given: bool) -> None:
    """Without a CMT column every dose goes into the model's first dose compartment: say so,
    since a dataset of IV doses fitted with the default oral model would put them in a depot."""
    from cohort.data.reader import read_columns

    try:
        columns = {c.upper() for c in read_columns(path)}  # the header line, not the file
    except Exception:  # noqa: BLE001 - the fit reports unreadable data itself
        return
    if "CMT" not in columns and len(model.dose_targets) > 0:
        which = "" if given else " (the default model; --model to choose)"
        warn(
            f"{path.name} has no CMT column: every dose goes into {model.dose_targets[0]!r} of "
            f"{model.name}{which}"
        )


def _control_stream(path: Path, **given):
    """The model and data of a NONMEM control stream; options that would redefine them are
    refused (the control stream is the whole specification)."""
    from cohort.inference.nonmem import ControlStreamError, read_control_stream

    clash = [f"--{k}" for k, v in given.items() if v]
    if clash:
        fail(f"{path.name} is a control stream: it sets the model; drop {', '.join(clash)}")
    try:
        return read_control_stream(path)
    except ControlStreamError as exc:
        fail(str(exc))


def _table(result) -> Table:
    """Estimates (ML) or posterior summaries (NUTS/SVI) of a fit just made."""
    title = f"{result.bound.spec.model.name}: {result.method} ({result.bound.n_subjects} subjects)"
    return estimates_table(result.summary, title, result.method)
