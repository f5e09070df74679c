"""Which files belong in a zarr store: its metadata documents, and the chunks inside its
arrays. Anything else in a store (a user's notes, a script) is not cohort's to delete; both
the local and the fsspec output checks ask this module."""

from __future__ import annotations

import re

from cohort.errors import OutputError

ZARR_META = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"})
# Chunk (or shard) keys inside an array's folder: zarr v3's default encoding ("c/0/1",
# "c.0.1", "c" for a 0-d array) and the v2 encoding ("0.1", "0/1", "0").
CHUNK_KEY = re.compile(r"c([./]\d+)*|\d+([./]\d+)*")
# zarr's local store writes each key to "<key minus suffix>.<uuid4 hex>.partial" and renames it
# into place: a process killed in between leaves that file behind (zarr's, hence cohort's).
ZARR_TEMP = re.compile(r"[^/]*\.[0-9a-f]{32}\.partial")


def stray_files(files: list[str], array_dirs: set[str]) -> list[str]:
    """Of ``files`` (paths relative to a store's root, ``/``-separated), those that are not
    zarr metadata and not a chunk of one of the arrays whose folders are ``array_dirs``
    (relative paths; ``""`` is the root itself)."""
    found = []
    for rel in files:
        folder, _, name = rel.rpartition("/")
        if ZARR_TEMP.fullmatch(name):
            continue
        if name in ZARR_META and (folder in array_dirs or _inside(folder, array_dirs) is None):
            continue
        owner = _inside(rel, array_dirs)
        if owner is not None and CHUNK_KEY.fullmatch(rel[len(owner) + 1 :] if owner else rel):
            continue
        found.append(rel)
    return sorted(found)


def _inside(rel: str, array_dirs: set[str]) -> str | None:
    """The array folder that ``rel`` lies strictly inside, or None."""
    parts = rel.split("/")
    for k in range(len(parts) - 1, -1, -1):
        folder = "/".join(parts[:k])
        if folder in array_dirs and folder != rel:
            return folder
    return None


def refuse_strays(
    flag: str,
    path: str,
    found: list[str],
    what: str = "files",
    *,
    deleting: str = "--overwrite would delete them",
    other: str = "path",
) -> None:
    """Refuse to replace a cohort store (or directory, named by ``flag``) that holds ``found``
    (its stray files), naming them; ``deleting`` says what would delete them."""
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise OutputError(
            f"{flag} {path!r} was written by cohort but now also holds {what} it did not write "
            f"({', '.join(found[:3])}{more}); {deleting}: move them out first, or choose "
            f"another {other}"
        )
