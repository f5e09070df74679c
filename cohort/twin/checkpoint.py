"""Finished blocks of a twin identification kept on disk, so that a rerun after a crash (or a
killed job) computes only the blocks still missing.

A CGM NUTS twin costs 15–30 s per patient-day on 2 cores (40–100 s with the wide prior): a batch
of a hundred runs for up to hours, and losing it to a killed process is what this prevents. The
checkpoint is a zarr store of cohort's own, one group per finished block (its ``done`` attribute
written last, so a block killed while it was written counts as missing); its ``key`` hashes
every input of the computation, so a checkpoint of other records, prior or options is never
mixed in: it is replaced instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import warnings
from pathlib import Path

import jax
import numpy as np
import zarr

from cohort.errors import CohortWarning, OutputError
from cohort.store.safety import check_path, foreign_files, remove_own, written_by_cohort
from cohort.store.zarr_store import new_layout
from cohort.twin import posterior


def inputs_key(*items) -> str:
    """A hash of everything a twin computation depends on: arrays by dtype, shape and bytes,
    anything else by ``repr`` (dicts in key order)."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                feed(x[k])
        elif isinstance(x, list | tuple):
            h.update(f"seq{len(x)}".encode())
            for v in x:
                feed(v)
        elif isinstance(x, np.ndarray | jax.Array):
            a = np.ascontiguousarray(np.asarray(x))
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            feed({f.name: getattr(x, f.name) for f in dataclasses.fields(x)})
        else:
            h.update(repr(x).encode())

    for item in items:
        feed(item)
    return h.hexdigest()


KIND = "twin checkpoint"  # the store's attrs["kind"]: a checkpoint, not another cohort store


def _attrs(path: str | Path) -> dict | None:
    """The root attributes of the store at ``path`` (one written before checkpoints had a
    ``kind``, with only its ``key``, counts as a checkpoint); None where unreadable."""
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - absent, not zarr, or a layout killed midway
        return None
    if "kind" not in attrs and "key" in attrs:
        attrs["kind"] = KIND
    return attrs


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a twin checkpoint (readable, and marked as one)."""
    attrs = _attrs(path)
    return attrs is not None and attrs.get("kind") == KIND


class Checkpoint:
    """The blocks of one computation (``key``) finished so far, in the store at ``path``."""

    def __init__(self, path: str | Path, key: str):
        self.path = check_path(path, "checkpoint")
        self.key = key
        if self.path.exists():
            if not written_by_cohort(self.path):
                raise OutputError(
                    f"checkpoint {str(self.path)!r} exists and was not written by cohort; "
                    "move it away or choose another output"
                )
            attrs = _attrs(self.path)
            if attrs is None:  # unreadable: a layout killed while it was made, ours
                attrs = {"kind": KIND}
            if attrs.get("kind") != KIND:
                # cohort's, but not a checkpoint: a population or simulation the user named
                # <name>.blocks.zarr was removed as a stale checkpoint (a probe)
                raise OutputError(
                    f"{str(self.path)!r} is where the blocks of this run are kept, and it holds "
                    "another cohort store (not a twin checkpoint); move it away or choose "
                    "another output"
                )
            stored = attrs.get("key")
            if stored != key:  # another computation's blocks (or a broken layout): ours
                remove_own(self.path, "checkpoint")
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new_layout(self.path, {"kind": KIND, "key": key})
        self.root = zarr.open_group(str(self.path), mode="r+")

    def finished(self) -> dict[int, tuple]:
        """``{block index: (rows, laplace, samples)}`` of the blocks written completely."""
        out = {}
        for name, g in self.root.groups():
            if not g.attrs.get("done"):
                continue
            arrays = {k: np.asarray(g[k][...]) for k in g.array_keys()}
            lap = posterior.Laplace(**_prefixed(arrays, "laplace_"))
            samples = None
            if g.attrs.get("sampled"):
                samples = posterior.Samples(
                    **_prefixed(arrays, "samples_"), seconds=float(g.attrs["seconds"])
                )
            out[int(name.split("_")[1])] = (arrays["rows"], lap, samples)
        return out

    def add(self, index: int, rows: np.ndarray, lap, samples) -> None:
        """Write block ``index``'s results; ``done`` last (a partial group is replaced)."""
        name = f"block_{index}"
        if name in self.root:
            remove_own(self.path / name, "checkpoint block")
        g = self.root.create_group(name)
        arrays = {"rows": rows}
        arrays.update({f"laplace_{k}": v for k, v in posterior.per_patient(lap).items()})
        if samples is not None:
            arrays.update({f"samples_{k}": v for k, v in posterior.per_patient(samples).items()})
        for k, v in arrays.items():
            v = np.asarray(v)
            g.create_array(k, shape=v.shape, dtype=v.dtype, compressors=None)[...] = v
        g.attrs.update(
            {
                "sampled": samples is not None,
                "seconds": float(samples.seconds) if samples is not None else 0.0,
                "done": True,
            }
        )

    def remove(self) -> None:
        """Delete the checkpoint (after the twins it served were returned)."""
        _remove(self.path)


@dataclasses.dataclass(frozen=True)
class KeptCheckpoint:
    """A ``checkpoint=`` that outlives the call: its blocks stay on disk when the twins are
    returned, until the caller has stored them and calls :meth:`remove` (the CLI does, after
    saving the twin store), so a crash between the computation and the save still finds
    every block."""

    path: Path

    def remove(self) -> None:
        _remove(check_path(self.path, "checkpoint"))


def _prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays named ``prefix + field``, by field."""
    return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}


def _remove(path: Path) -> None:
    """Delete a checkpoint whose twins were returned (or saved). One that now also holds
    files cohort did not write is kept, with a warning: refusing there threw away the
    finished computation."""
    if not (path.exists() and written_by_cohort(path) and is_checkpoint(path)):
        return  # never another kind of cohort store put there meanwhile
    found = foreign_files(path)
    if found:
        warnings.warn(
            f"checkpoint {str(path)!r} is kept: it holds files cohort did not write "
            f"({', '.join(found[:3])}); the twins are complete, delete it once those files "
            "are safe elsewhere",
            CohortWarning,
            stacklevel=3,
        )
        return
    shutil.rmtree(path)
