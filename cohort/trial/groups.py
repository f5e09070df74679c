"""Which groups of a trial store were written to the end.

A trial store holds the simulation, then the ``trial`` table, the ``analysis`` and the tables
computed beside it (dose sweep, sample sizes, escalation), each written after the last. A
run killed between them left a store whose simulation was complete, so it read as a finished
trial while its report silently lost sections (or failed deep in xarray on a half-written
group). Each group is listed in the root attribute ``groups_done`` once written; ``cohort
trial`` lists what it will write in ``groups_planned`` first. Stores written before these
attributes existed are not checked.
"""

from __future__ import annotations

import json
from pathlib import Path

PLANNED = "groups_planned"
DONE = "groups_done"


def _root(path: str | Path, mode: str = "r"):
    import zarr

    return zarr.open_group(str(path), mode=mode)


def _listed(attrs, key: str) -> list[str]:
    return json.loads(attrs.get(key, "[]"))


def plan(path: str | Path, names: list[str]) -> None:
    """Record the groups a command is about to write into the store at ``path``."""
    root = _root(path, "r+")
    root.attrs[PLANNED] = json.dumps(sorted(set(_listed(root.attrs, PLANNED)) | set(names)))


def planned_attrs(names: list[str]) -> dict[str, str]:
    """The root attribute that lists ``names`` as planned, for a store being created."""
    return {PLANNED: json.dumps(sorted(set(names)))}


def mark_done(path: str | Path, name: str) -> None:
    """Record that group ``name`` of the store at ``path`` was written completely."""
    root = _root(path, "r+")
    root.attrs[DONE] = json.dumps(sorted(set(_listed(root.attrs, DONE)) | {name}))


def unfinished(path: str | Path) -> list[str]:
    """Groups planned, or present, but not recorded as written (``[]`` for a store from
    before these records, or one that finished)."""
    try:
        root = _root(path)
    except Exception:  # noqa: BLE001 - not a readable store: its reader says what is wrong
        return []
    attrs = dict(root.attrs)
    if DONE not in attrs and PLANNED not in attrs:
        return []
    done = set(_listed(attrs, DONE))
    present = {name for name, _ in root.groups()}
    return sorted((set(_listed(attrs, PLANNED)) | present) - done)


def incomplete_message(path: str | Path, names: list[str]) -> str:
    return (
        f"{str(path)!r}: the trial run was interrupted before it finished writing "
        f"{', '.join(names)}; finish it with `cohort trial SPEC -o STORE --resume` (the same "
        "spec and options)"
    )
