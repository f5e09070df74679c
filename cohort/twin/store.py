"""Twin state in zarr: every identification or update as its own group, never overwritten.

Layout (zarr v3, cohort's mark on the root)::

    twins.zarr/
      update_000/records     the NONMEM records seen so far (dim ``record``)
      update_000/map         MAP ``eta``, Laplace ``cov``, objective, ok (+ NUTS diagnostics)
      update_000/posterior   arviz-style draws (chain, draw, patient) of each parameter
      update_001/...

The root attribute ``n_updates`` is written last, after an update's groups are complete: a
crash mid-write leaves the previous update current, and the next save replaces the partial
group. Reopening rebuilds the twins from the records and the stored prior, without refitting.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from cohort._version import __version__
from cohort.errors import CohortError, CohortWarning, OutputError
from cohort.store import locks_output
from cohort.store.safety import (
    NODES,
    check_path,
    check_replaceable,
    check_strays,
    clear_leftover,
    is_empty_directory,
    prepare_output,
    remove_own,
    swap_into_place,
    written_by_cohort,
)
from cohort.store.zarr_store import new_layout
from cohort.twin import posterior
from cohort.twin.prior import TwinError, TwinPrior

KIND = "cohort-twins"


DIGEST = "cohort_digest"


class DamagedGroup(Exception):
    """A stored group whose contents differ from its digest."""


def digest(ds: xr.Dataset) -> str:
    """A hash of a dataset's variables (names, shapes, values; numbers compared as float64
    with one NaN, text as text), written with each group of a twin store and checked when it
    is read: zarr reads a missing chunk as its fill value, so a store with a chunk deleted
    gave NaN estimates flagged ok, a forecast of NaN and a crash in `twin dose` (a probe)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        values = np.asarray(ds[name].values)
        h.update(f"{name}{values.shape}".encode())
        if values.dtype.kind in "biuf":
            x = np.ascontiguousarray(values, dtype=np.float64)
            h.update(np.where(np.isnan(x), np.nan, x).tobytes())
        else:
            h.update("\x00".join(map(str, values.ravel().tolist())).encode())
    return h.hexdigest()


def update_group(k: int) -> str:
    """The group of update ``k`` (0: the identification) in a twin store."""
    return f"update_{k:03d}"


def interrupted_first_save(path: str | Path) -> bool:
    """Whether ``path`` is a twin store cohort began and never committed (killed during its
    first save: no complete update). Nothing in it is a result, so the command that was
    interrupted may write it again without ``--overwrite``."""
    path = Path(path)
    if not path.is_dir() or is_empty_directory(path) or not written_by_cohort(path):
        return False
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - not a readable group: not one of ours to continue
        return False
    return attrs.get("kind") == KIND and int(attrs.get("n_updates", 0)) == 0


@locks_output("path")
def save_twins(twins, path: str | Path, *, overwrite: bool = False) -> Path:
    """Append ``twins``' current state to the store at ``path`` (created if absent). An
    existing store must be a twin store of the same prior and patients; ``overwrite``
    replaces a store cohort wrote (never anything else)."""
    path = check_path(path)
    if path.suffix != ".zarr":
        raise OutputError(f"{path}: a twin store is a .zarr directory")
    prior_json = twins.prior.to_json()
    if interrupted_first_save(path):  # killed before its first commit: nothing to keep
        remove_own(path, "twin store without a complete update")
    final = path
    if path.exists() and not overwrite and not is_empty_directory(path):  # an empty one: new
        if not written_by_cohort(path):
            raise OutputError(f"{path} exists and was not written by cohort; choose a new path")
        root = zarr.open_group(str(path), mode="r+")
        attrs = dict(root.attrs)
        if attrs.get("kind") != KIND:
            raise OutputError(f"{path} is not a twin store (kind {attrs.get('kind')!r})")
        if json.loads(attrs.get("prior") or "null") != json.loads(prior_json):  # any key order
            raise TwinError(f"{path}: these twins have another prior than the stored ones")
        stored = set(json.loads(attrs.get("ids", "[]")))
        if stored != set(map(_plain, twins.ids.tolist())):
            raise TwinError(f"{path}: these twins are for other patients than the stored ones")
        k = int(attrs.get("n_updates", 0))
        mine = json.loads(json.dumps(list(twins.history), default=float))
        for j, lineage in enumerate(_lineages(root, k)):
            if lineage != mine:
                continue
            if j == k - 1:  # the store's latest state already: nothing to add
                return final
            # an older object saved again became the latest, and the updates after it could
            # then be applied a second time (a probe)
            raise TwinError(
                f"{path}: these twins are stored already as update {j}, and the store's latest "
                f"is update {k - 1}: saving them again would make an older state current. "
                f"Continue from the latest (open_twins({str(final)!r})), or from update {j} "
                f"(open_twins(..., {j}), then update it)"
            )
        if update_group(k) in root:  # a partial group of an interrupted save: ours to replace
            remove_own(path / update_group(k), "partial twin update")
    else:
        if overwrite and path.exists() and not is_empty_directory(path):
            # the new store is written aside and swapped in complete: the old one was deleted
            # first, and a kill then left neither (a probe)
            check_strays(check_replaceable(path, overwrite=True))
            path = path.with_name(f".{path.name}.partial")
            clear_leftover(  # a killed replacement's; anything else there is refused
                path,
                "partial twin store",
                "(the temporary name of this replacement) exists and was not written by "
                "cohort; move it away",
            )
        else:
            prepare_output(path, overwrite=overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        # one write with the mark: a store killed here is still a twin store of no update
        new_layout(
            path,
            {
                "kind": KIND,
                "prior": prior_json,
                "model": twins.prior.model.name,
                "ids": json.dumps([_plain(i) for i in twins.ids.tolist()]),
                "n_updates": 0,
                "cohort_version": __version__,
                NODES: [update_group(0)],
            },
        )
        k = 0
    # the update groups it holds (safety.NODES), this one included before it is written: a
    # user's group added beside them stops --overwrite instead of being deleted
    zarr.open_group(str(path), mode="r+").attrs[NODES] = [update_group(i) for i in range(k + 1)]
    for name, ds in _datasets(twins).items():
        ds.attrs[DIGEST] = digest(ds)
        ds.to_zarr(
            str(path),
            group=f"{update_group(k)}/{name}",
            mode="w",
            consolidated=False,
            zarr_format=3,
        )
    zarr.open_group(str(path), mode="r+").attrs["n_updates"] = k + 1  # the commit
    if final is not path:
        swap_into_place(path, final)
    return final


def _column(s: pd.Series) -> np.ndarray:
    v = s.to_numpy()
    return v.astype(object) if v.dtype.kind in "OUS" else v


def _plain(x):
    return x.item() if hasattr(x, "item") else x


def _datasets(twins) -> dict[str, xr.Dataset]:
    if hasattr(twins, "store_datasets"):  # CGM twins lay out their own groups
        return twins.store_datasets()
    s = twins.samples
    if s is not None:
        z = s.eta  # [N, chain, draw, q]
    else:
        z = twins.eta_draws(1000, 0)[:, None]  # Laplace draws as one chain
    lp = twins.log_params(z)
    values = {n: np.exp(lp[..., k]) for k, n in enumerate(twins.prior.names)}
    fit, post = posterior_groups(twins.laplace, s, twins.ids, twins.prior.eta_names, z, values)
    fit.attrs.update(
        method=twins.method,
        options=json.dumps(twins.options),
        history=json.dumps(list(twins.history)),
    )
    records = records_group(twins.data.to_frame().reset_index(drop=True))
    return {"records": records, "map": fit, "posterior": post}


def records_group(frame: pd.DataFrame) -> xr.Dataset:
    """The records seen so far as a dataset along ``record`` (string columns as objects)."""
    return xr.Dataset({c: ("record", _column(frame[c])) for c in frame.columns})


def posterior_groups(
    lap: posterior.Laplace, samples, ids, eta_names, eta: np.ndarray, values: dict
) -> tuple[xr.Dataset, xr.Dataset]:
    """The ``map`` group (modes, Laplace covariances, NUTS diagnostics when sampled) and the
    arviz-style ``posterior`` group of one update: ``eta [N, chain, draw, q]`` the stored
    draws and ``values`` each parameter's draws ``[N, chain, draw]`` on its natural scale."""
    eta_names = np.asarray(eta_names, dtype=object)  # variable-length strings
    ids = _column(pd.Series(ids))
    coords = {"patient": ids, "eta_dim": eta_names, "eta_dim2": eta_names}
    fit = xr.Dataset(
        {
            "eta": (("patient", "eta_dim"), lap.eta),
            "cov": (("patient", "eta_dim", "eta_dim2"), lap.cov),
            "objective": ("patient", lap.objective),
            "ok": ("patient", lap.ok),
        },
        coords=coords,
    )
    if samples is not None:
        fit["rhat"] = (("patient", "eta_dim"), samples.rhat)
        fit["ess_bulk"] = (("patient", "eta_dim"), samples.ess_bulk)
        fit["divergences"] = ("patient", samples.divergences)
    post = xr.Dataset(
        {n: (("patient", "chain", "draw"), v) for n, v in values.items()},
        coords={"patient": ids},
    ).transpose("chain", "draw", "patient")
    post["eta"] = (("chain", "draw", "patient", "eta_dim"), np.moveaxis(eta, 0, 2))
    post = post.assign_coords(eta_dim=eta_names)
    post.attrs["source"] = "nuts" if samples is not None else "laplace approximation draws"
    return fit, post


def open_twins(path: str | Path, update: int | None = None):
    """The twins stored at ``path`` (the latest update, or ``update``: 0 is the fit)."""
    path = Path(path)
    if not path.exists():
        raise OutputError(f"no twin store at {str(path)!r}")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a non-store directory
        raise OutputError(f"{path}: not a zarr store ({exc})") from None
    attrs = dict(root.attrs)
    if attrs.get("kind") != KIND:
        raise OutputError(f"{path} is not a twin store")
    n = int(attrs.get("n_updates", 0))
    if n == 0:
        raise OutputError(f"{path}: the store holds no complete update")
    k = n - 1 if update is None else int(update)
    if not 0 <= k < n:
        raise TwinError(f"update: {k} is not one of 0..{n - 1}")

    def read(name):
        ds = xr.open_zarr(
            str(path), group=f"{update_group(k)}/{name}", consolidated=False, zarr_format=3
        ).load()
        if DIGEST in ds.attrs and ds.attrs[DIGEST] != digest(ds):
            raise DamagedGroup(
                f"group {name!r} differs from what was written (a chunk missing or edited)"
            )
        return ds

    try:
        return _read_twins(path, attrs, k, read)
    except CohortError:
        raise
    except Exception as exc:  # zarr/numcodecs/xarray errors of a damaged or edited store
        earlier = (
            f"; the earlier updates may still be readable: open_twins(path, update={k - 1}) "
            f"or `cohort twin update/forecast/dose` with --from-update/--at-update {k - 1}"
            if k > 0
            else ""
        )
        raise OutputError(
            f"{path}: update {k} ({update_group(k)}) of the twin store cannot be read "
            f"({type(exc).__name__}: {exc}){earlier}"
        ) from None


def _lineages(root, n: int) -> list[list | None]:
    """Each stored update's history (its lineage of steps), None where unreadable."""
    out = []
    for k in range(n):
        try:
            out.append(json.loads(root[f"{update_group(k)}/map"].attrs.get("history", "[]")))
        except Exception:  # noqa: BLE001 - a damaged group: open_twins names it when read
            out.append(None)
    return out


def update_log(path: str | Path) -> list[dict]:
    """One row per stored update of the twin store at ``path``, in store order: ``update``
    (its number, as ``open_twins`` and ``--at-update`` take it), ``from`` (the stored update
    it continues; None for an identification), and its own history entry (``step``,
    ``seconds``, observations or rows). An update continued from an earlier one
    (``--from-update``) leaves a branch: the latest update's own history then skips the
    abandoned one, and numbering its lineage 0, 1, ... named the wrong stored updates."""
    root = zarr.open_group(str(path), mode="r")
    lineages = _lineages(root, int(root.attrs.get("n_updates", 0)))
    rows = []
    for k, lineage in enumerate(lineages):
        if not lineage:
            rows.append({"update": k, "from": None, "step": "unreadable"})
            continue
        parent = next((j for j in range(k - 1, -1, -1) if lineages[j] == lineage[:-1]), None)
        rows.append({"update": k, "from": parent, **lineage[-1]})
    return rows


def _read_twins(path: Path, attrs: dict, k: int, read):
    """The twins of update ``k`` (groups read through ``read``)."""
    from cohort.twin.problem import bind_twins, read_records
    from cohort.twin.twins import Twins

    prior = TwinPrior.from_json(attrs["prior"])
    if attrs.get("model") == "t1d_minimal":
        from cohort.twin.cgm import CGMTwins

        return CGMTwins.from_store(prior, read)
    rec = read("records")
    frame = pd.DataFrame({c: rec[c].to_numpy() for c in rec.data_vars})
    with warnings.catch_warnings():  # said when the records were added, not at every reopening
        warnings.simplefilter("ignore", CohortWarning)
        data = read_records(frame, prior)
    bm = bind_twins(prior, data)
    fit = read("map")
    lap, samples = read_posterior(fit, read, prior.eta_names)
    return Twins(
        prior,
        data,
        bm,
        lap,
        fit.attrs["method"],
        samples,
        tuple(json.loads(fit.attrs["history"])),
        json.loads(fit.attrs["options"]),
    )


def read_posterior(
    fit: xr.Dataset, read, names: tuple[str, ...]
) -> tuple[posterior.Laplace, posterior.Samples | None]:
    """The Laplace approximation and (when sampled) the NUTS draws of one stored update:
    ``fit`` its ``map`` group, ``read(name)`` any of its groups, ``names`` the order of the
    estimated quantities in the twins being rebuilt. The stored arrays are matched by the
    names stored with them, not by position (stores written before 2026-12-05 kept their
    prior with its parameters sorted by name, so their order can differ from the prior's)."""
    stored = [str(n) for n in fit["eta_dim"].to_numpy()]
    if sorted(stored) != sorted(names):
        raise TwinError(
            f"the stored posterior is of {stored}, the stored prior estimates {list(names)}: "
            "the store is damaged or was written by another program"
        )
    k = np.array([stored.index(n) for n in names])
    lap = posterior.Laplace(
        fit["eta"].to_numpy()[:, k],
        fit["cov"].to_numpy()[:, k][:, :, k],
        fit["objective"].to_numpy(),
        fit["ok"].to_numpy().astype(bool),
    )
    samples = None
    if "rhat" in fit:
        z = np.moveaxis(read("posterior")["eta"].to_numpy(), 2, 0)[..., k]
        samples = posterior.Samples(
            z,
            fit["rhat"].to_numpy()[:, k],
            fit["ess_bulk"].to_numpy()[:, k],
            fit["divergences"].to_numpy(),
        )
    return lap, samples
