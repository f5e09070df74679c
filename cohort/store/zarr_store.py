"""Chunk-aligned, resumable zarr v3 stores (dims ``patient``, ``time``; whole chunks per batch).

The full layout (every array, its dims, units and provenance attrs) is created first; each
batch then writes whole chunks along ``patient`` (one per batch, or a few equal ones for large
outputs) and only afterwards flags its ``chunk_done`` entry, so a crash loses at most the
batch in flight and a rerun skips finished chunks. Arrays are written through zarr directly
(the region-write semantics of ``xr.Dataset.to_zarr(region=)`` without its per-call overhead,
which dominated at 10^6 patients); xarray reads the store back since every array carries
``dimension_names``. Outputs use Blosc-LZ4 with byte shuffle: in DESIGN §5 measurements it
wrote ~5x faster than zarr's default zstd at a modest size cost.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from cohort.errors import StoreError
from cohort.store import remote
from cohort.store.remote import is_url
from cohort.store.safety import (
    NODES,
    ZARR_MARK,
    check_store_name,
    foreign_files,
    prepare_output,
    remove_zarr_leftovers,
    root_attributes,
    written_by_cohort,
)

RUN_TOKEN = "run_token"  # root attribute: a new one for each creation of a result store
# Level 1: in bench_stream (10^6 patients) it wrote 4 % faster than level 5 for a 7 % larger
# store (ratio 1.41 vs 1.51); on 2 cores the write side costs about as much CPU as the solves.
OUTPUT_CODEC = BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")


OUTPUT_CHUNK_BYTES = 16 * 2**20  # target size of one uncompressed output chunk


PARAMETER_CHUNK_BYTES = 2 * 2**20


def whole_array_rows(chunk_size: int, n_patients: int) -> int:
    """Patients per zarr chunk of the per-patient arrays written whole when a store is created
    (parameters, covariates, IDs, the patient axis): whole batches up to about
    ``PARAMETER_CHUNK_BYTES`` of float64. Nothing writes them batch by batch, and zarr's cost
    is per chunk: 14 parameters of 10^6 patients took 0.74 s in chunks of 16,384 and 0.15 s in
    chunks of 262,144 (measured), paid before any batch starts."""
    rows = chunk_size * max(1, PARAMETER_CHUNK_BYTES // 8 // chunk_size)
    return max(1, min(rows, n_patients))


def output_chunk_rows(batch: int, n_times: int, itemsize: int) -> int:
    """Patients per output chunk: the batch size divided into equal parts of at most about
    ``OUTPUT_CHUNK_BYTES``, so a batch's region write covers whole chunks that zarr
    compresses in parallel, and each chunk's buffers stay small enough for the allocator to
    reuse (100 MB chunks were compressed one at a time into freshly faulted memory, measured
    in benchmarks/bench_stream.py). A batch with no suitable divisor stays one chunk."""
    parts = max(1, math.ceil(batch * n_times * itemsize / OUTPUT_CHUNK_BYTES))
    for k in range(parts, min(batch, 4 * parts) + 1):
        if batch % k == 0:
            return batch // k
    return batch


class ResultStore:
    """A result store being written batch by batch."""

    def __init__(self, path: str | os.PathLike, group: zarr.Group, chunk_size: int):
        self.path = _store_path(path)
        self.group = group
        self.chunk_size = chunk_size
        # which creation of the store at `path` this is: a Dask task of a killed client runs
        # on, and must not write into a store made since at the same path (--overwrite)
        self.token = group.attrs.get(RUN_TOKEN)

    @property
    def token_on_disk(self) -> str | None:
        """The run token the store at ``path`` has now (read again, not cached)."""
        return _open_group(self.path, mode="r").attrs.get(RUN_TOKEN)

    def check_token(self) -> None:
        """Refuse to write when the store at ``path`` is no longer the one this handle was
        made for (it was replaced, e.g. by an --overwrite run, since this task was planned)."""
        if self.token is not None and self.token_on_disk != self.token:
            raise StoreError(
                f"{str(self.path)!r} was replaced since this task was planned (another run "
                "overwrote it); this task's chunks are not written there"
            )

    @property
    def location(self) -> str:
        """Where another process finds this store: its URL, or its absolute path (a worker's
        working directory is not the client's)."""
        return self.path if isinstance(self.path, str) else str(self.path.resolve())

    @property
    def n_chunks(self) -> int:
        return self.group["chunk_done"].shape[0]

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        n_patients: int,
        times: np.ndarray,
        time_units: str,
        outputs: dict[str, dict[str, str]],
        parameters: dict[str, tuple[np.ndarray, dict[str, str]]],
        dtype: str,
        chunk_size: int,
        attrs: dict[str, Any],
        variables: dict[str, tuple[str, dict[str, Any]]] | None = None,
        ids: np.ndarray | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ) -> ResultStore:
        """Create the layout, or reopen it for resuming when ``resume`` and the spec matches.

        ``parameters`` are the per-patient inputs, ``{name: (values [N], attrs)}``: written
        whole once (a store missing them, killed while they were written, gets them on
        resume), not batch by batch. ``variables`` adds per-patient results written with each
        batch (e.g. glycaemic metrics): ``{name: (dtype, attrs)}``; unwritten entries read NaN
        (integers: -1). ``ids``: the patients' IDs from the user's records (numbers or text),
        stored as the ``ID`` coordinate."""
        check_store_name(path)
        path = prepare_output(path, overwrite=overwrite, resume=resume, resumable=True)
        if resume and _exists(path) and resumable_layout(path) is not None:
            store = cls.reopen(path, attrs["spec_hash"], chunk_size, attrs)
            if not store.group.attrs.get("parameters_written", True):
                store._write_parameters({k: v for k, (v, _) in parameters.items()})
            return store
        g = new_layout(path, {RUN_TOKEN: uuid.uuid4().hex})
        n_chunks = max(1, math.ceil(n_patients / chunk_size))
        whole = whole_array_rows(chunk_size, n_patients)
        add_patient_axis(g, n_patients, whole)
        tc = g.create_array(
            "time",
            shape=(len(times),),
            dtype="float64",
            dimension_names=["time"],
            attributes={"units": time_units, "long_name": "time since start"},
        )
        tc[:] = np.asarray(times, dtype=float)
        rows = output_chunk_rows(chunk_size, len(times), np.dtype(dtype).itemsize)
        for name, meta in outputs.items():
            g.create_array(
                name,
                shape=(n_patients, len(times)),
                dtype=dtype,
                chunks=(rows, len(times)),
                dimension_names=["patient", "time"],
                compressors=OUTPUT_CODEC,
                fill_value=np.nan,
                attributes=_jsonable(meta),
            )
        for name, (_, meta) in parameters.items():
            g.create_array(
                name,
                shape=(n_patients,),
                dtype="float64",
                chunks=(whole,),
                dimension_names=["patient"],
                fill_value=np.nan,
                attributes=_jsonable(meta),
            )
        if ids is not None:
            text = ids.dtype.kind in "USTO"
            g.create_array(
                "ID",
                shape=(n_patients,),
                dtype=str if text else ids.dtype,
                chunks=(whole,),
                dimension_names=["patient"],
                fill_value="" if text else 0,
                attributes=ID_ATTRS,
            )[:] = ids
        for name, (vdtype, meta) in (variables or {}).items():
            g.create_array(
                name,
                shape=(n_patients,),
                dtype=vdtype,
                chunks=(chunk_size,),
                dimension_names=["patient"],
                fill_value=np.nan if np.dtype(vdtype).kind == "f" else -1,
                attributes=_jsonable(meta),
            )
        g.create_array(
            "status",
            shape=(n_patients,),
            dtype="int8",
            chunks=(chunk_size,),
            dimension_names=["patient"],
            fill_value=-1,
            attributes=_jsonable(
                {
                    "long_name": "per-patient solve status",
                    "flag_values": attrs.get("status_codes", []),
                    "flag_meanings": attrs.get("status_meanings", ""),
                    "comment": "-1: not computed yet",
                }
            ),
        )
        add_done_flags(g, n_chunks, "batch finished and fully written")
        nodes = sorted(name for name, _ in g.members())  # what else appears is not cohort's
        g.attrs.update(
            _jsonable({**attrs, NODES: nodes, "layout_complete": True, "parameters_written": False})
        )
        store = cls(path, g, chunk_size)
        store._write_parameters({k: v for k, (v, _) in parameters.items()})
        return store

    def _write_parameters(self, values: dict[str, np.ndarray]) -> None:
        """Every per-patient input array, whole (zarr writes its chunks concurrently): one
        call per array instead of one per array and batch, whose fixed cost dominated at
        10^6 patients (measured: 23 ms per batch for 11 arrays)."""
        for name, v in values.items():
            self.group[name][:] = np.asarray(v, dtype="float64")
        self.group.attrs["parameters_written"] = True

    @classmethod
    def reopen(
        cls, path: Path | str, spec_hash: str, chunk_size: int, attrs: dict | None = None
    ) -> ResultStore:
        """The store at ``path`` to finish, if it was written for ``spec_hash`` with
        ``chunk_size``; a refusal names the recorded attributes (``attrs``: the new run's)
        that differ, e.g. the seed or the controller."""
        try:
            g = _open_group(path, mode="r+")
        except Exception as exc:  # zarr raises several types for a non-store directory
            raise StoreError(f"{str(path)!r} is not a cohort result store: {exc}") from None
        if not _layout_complete(path):
            raise StoreError(f"{str(path)!r} is not a complete cohort result store")
        old = g.attrs.get("spec_hash")
        if old != spec_hash:
            differ = _differing(dict(g.attrs), _jsonable(attrs or {}))
            said = (
                "; it differs in " + ", ".join(differ)
                if differ
                else " (a different population, dosing or option)"
            )
            raise StoreError(
                f"cannot resume {str(path)!r}: it was written for different inputs (spec hash "
                f"{old} != {spec_hash}){said}; resume with the inputs it was written with, or "
                "give a new output path, or replace it with --overwrite (Python: "
                "overwrite=True)"
            )
        if int(g.attrs.get("chunk_size", -1)) != chunk_size:
            raise StoreError(
                f"cannot resume {str(path)!r}: it was written with chunk_size "
                f"{g.attrs.get('chunk_size')}, not {chunk_size}"
            )
        return cls(path, g, chunk_size)

    @classmethod
    def attach(cls, path: str | os.PathLike, token: str | None = None) -> ResultStore:
        """The complete store another process created, opened to write some of its chunks
        (a distributed task: the client created the layout and checked the inputs). ``token``:
        the client's :attr:`token`; a store created since (another run at the same path) is
        refused, and :meth:`write_chunk` checks it again before each write."""
        path = _store_path(path)
        if not _layout_complete(path):
            raise StoreError(f"{str(path)!r} is not a complete cohort result store")
        g = _open_group(path, mode="r+")
        store = cls(path, g, int(g.attrs["chunk_size"]))
        if token is not None:
            store.token = token
            store.check_token()
        return store

    def done_chunks(self) -> np.ndarray:
        return np.asarray(self.group["chunk_done"][:], dtype=bool)

    def write_chunk(
        self,
        k: int,
        outputs: dict[str, np.ndarray | Callable[[], np.ndarray]],
        status: np.ndarray,
        params: dict[str, np.ndarray],
    ) -> None:
        """Write batch ``k`` (arrays with the patient axis first), then mark it done. An output
        given as a callable is built on the worker thread that writes it, so e.g. a caller's
        transposed copies run in parallel too. ``params`` holds the batch's per-patient
        results (the ``variables`` of :meth:`create`)."""
        sl = slice(k * self.chunk_size, k * self.chunk_size + len(status))
        self.check_token()

        def write_output(item):
            name, arr = item
            arr = arr() if callable(arr) else arr
            # Output chunks are never all fill value: skipping zarr's check for that saves a
            # full isnan pass over each chunk. A strided input would go through zarr's own
            # (2-3x slower) copy: it is handed over contiguous.
            array = self.group[name].with_config({"write_empty_chunks": True})
            array[sl, :] = np.ascontiguousarray(arr)

        def write(item):
            self.group[item[0]][sl] = item[1]

        # Arrays are written concurrently: compression and file writes release the GIL, so
        # the writer uses a second core when the solves leave one free. The status goes last:
        # a chunk killed mid-write must not read "ok" over outputs never written.
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(outputs) + 1) as pool:
            done = [pool.submit(write_output, item) for item in outputs.items()]
            done += [pool.submit(write, item) for item in params.items()]
            for f in done:
                f.result()
        write(("status", status.astype(np.int8)))
        self.check_token()  # replaced meanwhile: its new run rewrites this chunk; not flagged
        self.group["chunk_done"][k] = True

    def finish(self) -> None:
        """Nothing to flush: every chunk is durable once written. (Metadata is deliberately not
        consolidated: consolidation is not part of the zarr v3 spec.)"""


def new_layout(path: Path | str, attributes: dict | None = None) -> zarr.Group:
    """An empty zarr v3 group at ``path`` (which must not exist). Its root attributes carry
    cohort's mark (and ``attributes``) from the first write on, so a store killed while its
    layout is created is still recognised as cohort's, and as what it is; writers set
    ``layout_complete`` once every array exists."""
    return _open_group(
        path, mode="w-", zarr_format=3, attributes={**(attributes or {}), **ZARR_MARK}
    )


def add_patient_axis(g: zarr.Group, n_patients: int, chunk_size: int) -> None:
    """The ``patient`` coordinate 0..N-1, in zarr chunks of ``chunk_size`` rows."""
    pc = g.create_array(
        "patient",
        shape=(n_patients,),
        dtype="int64",
        chunks=(chunk_size,),
        dimension_names=["patient"],
        attributes={"long_name": "virtual patient index"},
    )
    pc[:] = np.arange(n_patients)


def add_done_flags(g: zarr.Group, n_chunks: int, long_name: str) -> None:
    """``chunk_done[k]``: set only after chunk ``k`` is fully written (resume skips it). One
    zarr chunk per flag: processes writing different chunks of a store concurrently (Dask
    workers) never rewrite each other's flags (a shared zarr chunk is read-modify-write)."""
    g.create_array(
        "chunk_done",
        shape=(n_chunks,),
        dtype="bool",
        chunks=(1,),
        dimension_names=["chunk"],
        fill_value=False,
        attributes={"long_name": long_name},
    )


def resumable_layout(path: Path | str, what: str = "result store") -> zarr.Group | None:
    """The group of the existing store at ``path`` to resume into: its group when its layout
    is complete; ``None`` when it was killed while its layout was created (nothing was
    written yet: it is removed, start over); a :class:`StoreError` when cohort did not write
    it."""
    if _layout_complete(path):
        if not is_url(path):
            remove_zarr_leftovers(Path(path))  # a kill mid-write left zarr's temporary files
        return _open_group(path, mode="r+")
    if not (remote.written_by_cohort(path) if is_url(path) else written_by_cohort(path)):
        raise StoreError(
            f"cannot resume {str(path)!r}: it is not a cohort {what}; choose another path"
        )
    if is_url(path):
        remote.remove(path)
    else:
        foreign = foreign_files(Path(path))
        if foreign:
            raise StoreError(
                f"cannot resume {str(path)!r}: its layout is incomplete and it holds files "
                f"cohort did not write ({', '.join(foreign[:3])}); move them out first"
            )
        shutil.rmtree(path)
    return None


def stored_chunk_size(path: str | os.PathLike) -> int | None:
    """The chunk size of the complete cohort store at ``path`` (None: no such store), so a
    resumed run continues with its batches whatever its default would be now."""
    path = _store_path(path)
    try:
        if not _exists(path) or not _layout_complete(path):
            return None
        value = _open_group(path, mode="r").attrs.get("chunk_size")
    except Exception:  # noqa: BLE001 - not a store: the writer reports it with context
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def _store_path(path: str | os.PathLike) -> Path | str:
    """A store URL as given (a string), a local store as a :class:`Path`."""
    return path if is_url(path) else Path(path)


def _open_group(path: Path | str, **kwargs) -> zarr.Group:
    """``zarr.open_group`` of a local path or a store URL (through fsspec)."""
    if is_url(path):
        kwargs["storage_options"] = remote.storage_options(str(path))
    return zarr.open_group(str(path), **kwargs)


def _exists(path: Path | str) -> bool:
    return remote.exists(path) if is_url(path) else Path(path).exists()


def _layout_complete(path: Path | str) -> bool:
    """The layout was created to the end (stores before this flag: a ``chunk_done`` array)."""
    if is_url(path):
        return bool((remote.root_attributes(path) or {}).get("layout_complete"))
    attrs = root_attributes(path)
    if attrs is None:
        return False
    return bool(attrs.get("layout_complete")) or (
        "spec_hash" in attrs and (path / "chunk_done" / "zarr.json").exists()
    )


ID_ATTRS = {"long_name": "patient ID in the dosing records"}
# attributes that change between runs of the same inputs (not worth naming in a refusal)
_VOLATILE = {"created", "spec_hash", "layout_complete", "parameters_written", "cohort_version",
             "jax_version", "written_by", "title", RUN_TOKEN, NODES,
             "groups_planned", "groups_done"}  # fmt: skip  # a trial's progress, not its inputs


def _differing(old: dict, new: dict, show: int = 4) -> list[str]:
    """``name (was X, now Y)`` for recorded run attributes that differ."""
    out = []
    for k in sorted(set(old) & set(new) - _VOLATILE):
        if old[k] != new[k]:
            a, b = _around_difference(str(old[k]), str(new[k]))
            out.append(f"{k} (was {a}, now {b})")
    return out[:show]


def _around_difference(a: str, b: str, width: int = 60) -> tuple[str, str]:
    """``a`` and ``b`` shortened to ``width`` characters around where they first differ (a
    long dosing description cut at its start read the same for both)."""
    if max(len(a), len(b)) <= width:
        return a, b
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, i - width // 3)

    def cut(s: str) -> str:
        return ("..." if lo else "") + s[lo : lo + width] + ("..." if lo + width < len(s) else "")

    return cut(a), cut(b)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def open_result(path: str | os.PathLike) -> xr.Dataset:
    """Open a result store lazily as an :class:`xarray.Dataset`."""
    path = _store_path(path)
    if not _exists(path):
        raise StoreError(f"no result store at {str(path)!r}")
    try:
        # chunks=None: lazily indexed numpy arrays whether or not Dask is installed (a user
        # wanting Dask arrays calls .chunk()); Dask-backed variables would change how every
        # caller indexes them (boolean masks of unknown size are refused).
        ds = xr.open_zarr(str(path), consolidated=False, chunks=None, create_default_indexes=False)
    except Exception as exc:
        raise StoreError(f"{str(path)!r} is not a readable zarr store: {exc}") from None
    ds = _with_default_indexes(ds)
    if "ID" in ds.data_vars:
        ds = ds.set_coords("ID")
    # cohort's mark is not a result attribute: a dataset derived from this one and saved by
    # the user must not carry it (--overwrite would take that store for cohort's own)
    marked = ds.attrs.pop("written_by", None) == ZARR_MARK["written_by"]
    if marked and not _layout_complete(path):
        # killed while its arrays were created: they exist, hold nothing (read as NaN), and
        # there is no chunk_done yet to say so
        ds.attrs["incomplete"] = (
            "the run was interrupted while its store was being created, before any result "
            "was written; rerun the same command with --resume (Python: resume=True)"
        )
    # numpy, not xarray's reduction: that imports dask.array when installed (~0.1 s)
    elif "chunk_done" in ds and not np.asarray(ds["chunk_done"].values).all():
        ds.attrs["incomplete"] = (
            "some batches were not written; rerun the same command with --resume (Python: "
            "resume=True)"
        )
    return ds


def _with_default_indexes(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with an index on each dimension coordinate (see :func:`indexed_coordinates`):
    what ``open_zarr`` does by default, without its cost."""
    variables = {}
    for dim in ds.dims:
        var = ds.variables.get(dim)
        if var is not None and var.dims == (dim,):
            # fastpath: a numpy array needs no duck-array checks (xarray's import dask.array,
            # 0.3-0.5 s of a repeated `cohort simulate` where dask is installed)
            values = np.asarray(var.values)
            variables[dim] = xr.Variable((dim,), values, var.attrs, var.encoding, fastpath=True)
    return ds.assign_coords(indexed_coordinates(variables)) if variables else ds


def indexed_coordinates(variables: dict[str, xr.Variable]) -> xr.Coordinates:
    """Dimension coordinates (1-d numpy variables named after their dimension) with their
    default indexes built from a ``pandas.Index``, values' dtype kept: the same coordinates
    as xarray makes, without its duck-array checks, which import pint where it is installed
    (0.16 s of a 2 s ``cohort simulate`` by ``python -X importtime``)."""
    import pandas as pd
    from xarray.core.indexes import PandasIndex

    indexes = {
        dim: PandasIndex(pd.Index(v.values, name=dim), dim, coord_dtype=v.dtype)
        for dim, v in variables.items()
    }
    return xr.Coordinates(variables, indexes=indexes)
