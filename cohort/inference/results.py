"""The result of a fit: named estimates with units, individual (EBE) values, diagnostics, and
storage as netCDF or zarr (arviz InferenceData for NUTS/SVI, an xarray Dataset for ML)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.errors import UnstableSpecificationWarning

from cohort._version import __version__
from cohort.errors import OutputError
from cohort.inference.layout import Layout, output_units
from cohort.inference.ml import MLEstimate
from cohort.inference.problem import BoundModel, Pop
from cohort.store import locks_output
from cohort.store.safety import (
    NODES,
    SIGNATURE,
    check_replaceable,
    check_strays,
    clear_leftover,
    swap_into_place,
)
from cohort.store.zarr_store import new_layout


@dataclasses.dataclass
class FitResult:
    """Outcome of :func:`cohort.inference.fit`.

    ``summary``: one row per estimated population quantity (ML: estimate, se, rse_percent;
    Bayesian: mean, sd, 90 % HDI, ESS, R-hat) with units. ``individual``: per-subject
    parameters (EBE / posterior mean). ``idata``: posterior for NUTS/SVI. ``ofv``: NONMEM-style
    objective (−2 log L without N·log 2π) for ML fits. ``pop``/``eta``: point estimates used by
    predictions and plots.
    """

    method: str
    bound: BoundModel
    summary: pd.DataFrame
    individual: pd.DataFrame
    pop: Pop
    eta: np.ndarray
    diagnostics: dict
    seconds: float
    idata: az.InferenceData | None = None
    ml: MLEstimate | None = None

    @property
    def ofv(self) -> float | None:
        return None if self.ml is None else self.ml.ofv

    @property
    def estimates(self) -> dict[str, float]:
        column = "estimate" if "estimate" in self.summary else "mean"
        return {k: float(v) for k, v in self.summary[column].items()}

    def __repr__(self) -> str:
        head = f"FitResult({self.method}, model={self.bound.spec.model.name!r}, "
        head += f"{self.bound.n_subjects} subjects, {self.seconds:.2f} s"
        if self.ofv is not None:
            head += f", OFV={self.ofv:.3f}"
        return head + ")"

    # -- predictions ---------------------------------------------------------------------------
    def predictions(self) -> dict[str, np.ndarray]:
        """``pred`` (typical subject, η = 0), ``ipred`` (individual) ``[N, J]`` and the data."""
        bm = self.bound
        pred, _ = jax.jit(bm.predict)(self.pop, jnp.zeros_like(jnp.asarray(self.eta)))
        ipred, ok = jax.jit(bm.predict)(self.pop, jnp.asarray(self.eta))
        obs = bm.data.observations
        return {
            "time": obs.time,
            "dv": obs.dv,
            "mask": obs.mask,
            "cens": obs.cens,
            "pred": np.asarray(pred),
            "ipred": np.asarray(ipred),
            "ok": np.asarray(ok),
        }

    def curves(self, points: int = 241) -> xr.Dataset:
        """Typical-value (``PRED``, η = 0) and individual (``IPRED``) predictions of every
        subject on a dense grid of ``points`` times from 0 to its last observation, under its
        own dosing records: the curves users plot through the data (dims ``subject``,
        ``point``; ``TIME`` per subject; NaN where a solve failed)."""
        bm = self.bound
        obs = bm.data.observations
        t_max = np.where(obs.mask, obs.time, -np.inf).max(axis=1)
        t_max = np.where(np.isfinite(t_max) & (t_max > 0), t_max, 1.0)
        grid = np.linspace(0.0, 1.0, points)[None, :] * t_max[:, None]
        arrays = dict(bm.arrays, time=jnp.asarray(grid))

        @jax.jit
        def both(pop, eta):
            pred, ok0 = bm.predict(pop, jnp.zeros_like(eta), arrays)
            ipred, ok = bm.predict(pop, eta, arrays)
            return jnp.where(ok0[:, None], pred, jnp.nan), jnp.where(ok[:, None], ipred, jnp.nan)

        pred, ipred = (np.asarray(a) for a in both(self.pop, jnp.asarray(self.eta)))
        dv_units = output_units(bm.spec)
        dims = ("subject", "point")
        return xr.Dataset(
            {
                "TIME": (dims, grid, {"units": bm.spec.model.time_units}),
                "PRED": (
                    dims,
                    pred,
                    {"long_name": "typical-value prediction (eta = 0)", "units": dv_units},
                ),
                "IPRED": (
                    dims,
                    ipred,
                    {"long_name": "individual prediction", "units": dv_units},
                ),
            },
            coords={"subject": np.asarray(bm.data.ids)},
            attrs={"description": "PRED and IPRED on a dense time grid per subject"},
        )

    def observation_table(self):
        """Per-observation ID, TIME, DV, PRED, IPRED, IWRES, CWRES, CENS, ETA_* (NONMEM's
        sdtab; :func:`cohort.inference.tables.observation_table`)."""
        from cohort.inference.tables import observation_table

        return observation_table(self)

    def shrinkage(self) -> dict[str, float]:
        """η- and ε-shrinkage in % as NONMEM's ETASHRINKSD/EPSSHRINKSD
        (:func:`cohort.inference.tables.shrinkage`)."""
        from cohort.inference.tables import shrinkage

        return shrinkage(self)

    # -- storage -------------------------------------------------------------------------------
    def to_xarray(self) -> xr.Dataset:
        """Point estimates, uncertainty and individual values as one xarray Dataset."""
        ds = xr.Dataset(coords={"parameter": list(self.summary.index)})
        for col in self.summary.columns:
            values = self.summary[col].to_numpy()
            ds[col] = ("parameter", values.astype(str) if values.dtype == object else values)
        ind = self.individual
        ds = ds.assign_coords(subject=np.asarray(ind.index))
        units = Layout(self.bound).units()
        for col in [c for c in ind.columns if not c.startswith("eta_")]:
            ds[f"{col}_ind"] = ("subject", ind[col].to_numpy(), {"units": units.get(col, "")})
        ds["eta"] = (("subject", "eta_dim"), np.asarray(self.eta))
        ds = ds.assign_coords(eta_dim=list(Layout(self.bound).eta_names))
        if self.ml is not None and self.ml.cov is not None:
            ds = ds.assign_coords(row=self.ml.names, col=self.ml.names)
            ds["covariance"] = (("row", "col"), self.ml.cov, {"long_name": "estimate covariance"})
        ds.attrs.update(_attrs(self))
        return ds

    @locks_output("path")
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write to ``.nc`` (netCDF-4) or ``.zarr``; Bayesian fits as InferenceData groups
        (``posterior``, ``sample_stats``, ..., ``fit_summary``). An existing ``path`` is
        replaced only with ``overwrite`` and only if cohort wrote it. Read back with
        :func:`load_fit`."""
        path = Path(path)
        if path.suffix not in (".nc", ".zarr"):
            raise OutputError(f"--out {path}: use a .nc (netCDF) or .zarr path")
        # checked now, replaced only once the new result is complete (swap_into_place)
        check_strays(check_replaceable(path, overwrite=overwrite))
        path.parent.mkdir(parents=True, exist_ok=True)
        groups = {"fit_summary": self.to_xarray()}
        table = self.observation_table()
        groups["observations"] = xr.Dataset(
            {c: ("obs", table[c].to_numpy()) for c in table.columns},
            attrs={"description": "one row per observation (NONMEM sdtab columns)"},
        )
        groups["curves"] = self.curves()
        if self.idata is not None:
            groups = {g: self.idata[g] for g in self.idata.groups()} | groups
        _write_groups(path, groups)
        return path


def _write_groups(path: Path, groups: dict[str, xr.Dataset]) -> None:
    """Each dataset as a group of one netCDF-4/zarr v3 store, cohort's mark on the root.

    Written through xarray rather than ``InferenceData.to_zarr``: arviz refuses zarr >= 3.
    The file is completed under a temporary name and renamed, so a crash never leaves half a
    result where a complete one is expected."""
    tmp = path.with_name(f".{path.name}.partial")
    clear_leftover(  # a killed save's; anything else under the name is refused
        tmp,
        "partial fit result",
        "(the temporary name this fit is saved under) exists and is not a fit cohort was "
        "saving; move it away, or save the fit under another name",
    )
    if path.suffix == ".nc":
        import h5py  # root attributes: cohort's signature (see cohort.store.safety)

        # the signature first, so that a killed save's file is recognised as cohort's (any
        # HDF5 file under the temporary name was deleted; a probe), then the groups
        with h5py.File(tmp, "w") as f:
            f.attrs["written_by"] = SIGNATURE
        for name, ds in groups.items():
            ds.to_netcdf(tmp, group=name, mode="a", engine="h5netcdf")
        with h5py.File(tmp, "r+") as f:
            f.attrs["groups"] = ",".join(groups)
    else:
        new_layout(tmp)
        with warnings.catch_warnings():
            # text coordinates (parameter names) are fixed-width strings, which zarr v3 stores
            # but flags as not yet specified: this store is read back by cohort/xarray alone
            warnings.filterwarnings("ignore", category=UnstableSpecificationWarning)
            for name, ds in groups.items():
                ds.to_zarr(str(tmp), group=name, mode="a", consolidated=False, zarr_format=3)
        # the groups it holds (safety.NODES): a user's group added later stops --overwrite
        zarr.open_group(str(tmp), mode="r+").attrs.update(
            {"groups": list(groups), NODES: list(groups)}
        )
    swap_into_place(tmp, path)


def load_fit(path: str | Path) -> dict[str, xr.Dataset]:
    """The groups of a fit written by :meth:`FitResult.save` (``fit_summary`` always;
    ``posterior``, ``sample_stats``, ... for NUTS/SVI)."""
    path = Path(path)
    if not path.exists():
        raise OutputError(f"no fit result at {str(path)!r}")
    if path.suffix == ".nc":
        import h5py

        with h5py.File(path, "r") as f:
            names = str(f.attrs.get("groups", "fit_summary")).split(",")
        return {g: xr.load_dataset(path, group=g, engine="h5netcdf") for g in names}
    names = zarr.open_group(str(path), mode="r").attrs.get("groups", ["fit_summary"])
    return {
        g: xr.open_zarr(str(path), group=g, consolidated=False, zarr_format=3).load() for g in names
    }


def _attrs(fit: FitResult) -> dict:

    spec = fit.bound.spec
    out = {
        "method": fit.method,
        "model": spec.model.name,
        "model_hash": spec.model.fingerprint(),
        "error_model": spec.error.kind,
        "omega": spec.omega,
        "omega_fixed": ",".join(p.name for p in spec.params if p.omega_fixed),
        "engine": fit.bound.engine,
        "n_subjects": fit.bound.n_subjects,
        "n_observations": fit.bound.data.n_observations,
        "seconds": fit.seconds,
        "cohort_version": __version__,
    }
    if fit.ml is not None:
        out.update(
            ofv=fit.ml.ofv,
            minus2ll=fit.ml.minus2ll,
            approximation=fit.ml.approx,
            se_method=fit.ml.se_method,
            converged=int(fit.ml.converged),
        )
    if spec.transform is None:  # the estimates as a prior for digital twins (cohort.twin)
        import json

        from cohort.inference.export import prior_description

        out["prior_spec"] = json.dumps(prior_description(fit))
    for k, v in fit.diagnostics.items():
        if isinstance(v, (int, float, str)):
            out[f"diagnostic_{k}"] = v
        elif isinstance(v, (list, tuple)):
            out[f"diagnostic_{k}"] = "; ".join(map(str, v))
    return out


def ml_summary(bm: BoundModel, est: MLEstimate) -> pd.DataFrame:
    layout = Layout(bm)
    units = layout.units(typical=True)
    fixed = layout.fixed_names()
    se = est.se
    rows = []
    for name, value in est.reported.items():
        s = 0.0 if name in fixed else se[name]
        rows.append(
            {
                "parameter": name,
                "estimate": value,
                "se": s,
                "rse_percent": 100.0 * s / abs(value) if value else np.nan,
                "fixed": name in fixed,
                "units": units.get(name, ""),
            }
        )
    return pd.DataFrame(rows).set_index("parameter")


def individual_table(bm: BoundModel, pop: Pop, eta) -> pd.DataFrame:
    """Per-subject estimated parameters at ``pop`` and random effects ``eta``."""
    pop = Pop(*(np.asarray(a, dtype=float) for a in pop))
    logp = bm.log_params(pop, np.asarray(eta, dtype=float), np.asarray(bm.features, float))
    cols = {p.name: np.exp(np.asarray(logp[:, k])) for k, p in enumerate(bm.spec.params)}
    table = pd.DataFrame(cols, index=pd.Index(np.asarray(bm.data.ids), name="ID"))
    for i, name in enumerate(Layout(bm).eta_names):
        table[f"eta_{name}"] = np.asarray(eta)[:, i]
    return table
