"""Output safety: cohort replaces only what it wrote itself, and refuses unclear paths.

Every command that writes goes through :func:`prepare_output` (and :func:`write_lock` while it
writes). A zarr store cohort creates carries :data:`ZARR_MARK` in its root attributes (stores of
earlier versions: their provenance attributes); another directory it creates (a report
folder) carries a marker file :data:`MARKER`.
A single file is recognised by a signature cohort embeds in it: a root attribute of a netCDF
file, the PNG ``Software`` text chunk, the first-line comment of a Markdown/HTML report. Files
written into a marked directory are listed in its marker. Anything else is the user's and is
never deleted or overwritten, whatever ``--overwrite`` says.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cohort.errors import OutputError
from cohort.store.keys import ZARR_META, ZARR_TEMP, refuse_strays, stray_files
from cohort.store.remote import filesystem, is_url
from cohort.store.remote import prepare as remote_prepare

MARKER = ".cohort"
"""JSON marker inside every directory cohort creates: ``{"writer": "cohort", "kind", "files"}``."""

SIGNATURE = "cohort"
"""Written into single files: netCDF root attribute ``written_by``, PNG ``Software``, the
first-line comment of reports."""

ZARR_MARK = {"written_by": SIGNATURE}
"""Root attributes of every zarr store cohort creates (a marker file would be reported by zarr
as an unknown member of the hierarchy)."""

NODES = "cohort_nodes"
"""Root attribute of a result store: the arrays its layout was created with. With the groups a
trial lists as planned (``groups_planned``/``groups_done``), it is what cohort put at the top
of the store: anything else there is the user's (an xarray group saved into it was deleted by
--overwrite, a probe)."""

REPORT_HEADER = "<!-- written by cohort -->"


def check_path(path: str | os.PathLike | None, flag: str = "--out") -> Path:
    """``path`` as a :class:`Path`, refusing empty paths, the filesystem root, the home
    directory, the current directory and its ancestors (an overwrite there would delete the
    user's work). A store URL (``s3://...``) is checked by :mod:`cohort.store.remote` and
    returned as given."""
    if path is None or str(path).strip() == "":
        raise OutputError(
            f"{flag}: empty path; give a file or directory name such as runs/out.zarr"
        )
    if is_url(path):
        filesystem(str(path), flag)
        return path  # type: ignore[return-value]  # a URL stays a string
    p = Path(path).expanduser()
    resolved = p.resolve()
    cwd = Path.cwd().resolve()
    protected = {Path(resolved.anchor), Path.home().resolve(), cwd, *cwd.parents}
    if resolved in protected:
        raise OutputError(
            f"{flag} {str(path)!r}: refusing to write to {resolved} (the root, home or current "
            "directory, or one above it); give a new path such as runs/out.zarr"
        )
    if p.exists() and not (p.is_dir() or p.is_file()):
        raise OutputError(f"{flag} {str(path)!r}: not a regular file or directory")
    return p


def _marker(path: Path) -> dict | None:
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("writer") == SIGNATURE else None


def root_attributes(path: Path) -> dict | None:
    """The root attributes of the local zarr v3 store at ``path`` (its ``zarr.json``, read
    without opening the store), or None where there is no readable one."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    return attrs if isinstance(attrs, dict) else {}


def _zarr_provenance(path: Path) -> bool:
    """A zarr store cohort created: its root attributes carry cohort's mark (set in the same
    write that creates the root). Provenance attributes alone (``cohort_version``,
    ``spec_hash``) do not count: a store a user derived with xarray from a cohort result
    copies them, and ``--overwrite`` then deleted the user's store (a probe)."""
    return (root_attributes(path) or {}).get("written_by") == SIGNATURE


def _file_signature(path: Path) -> bool:
    suffix = path.suffix.lower()
    try:
        if suffix == ".nc":
            return hdf5_signed(path)
        if suffix == ".png":
            with open(path, "rb") as f:
                head = f.read(4096)
            return b"Software\x00" + SIGNATURE.encode() in head
        if suffix in (".md", ".html", ".htm"):
            with open(path, encoding="utf-8", errors="replace") as f:
                return REPORT_HEADER in f.read(512)
    except (OSError, ValueError):
        return False
    return False


def hdf5_signed(path: Path) -> bool:
    """Whether the HDF5 (netCDF-4) file at ``path`` carries cohort's signature among its root
    attributes (a fit's save writes it first, so a killed save's file is recognised too)."""
    import h5py  # netCDF-4 files are HDF5; h5py comes with h5netcdf

    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("written_by", b"")
    except (OSError, ValueError):  # not HDF5 (h5py reads its signature first)
        return False
    value = value.decode() if isinstance(value, bytes) else str(value)
    return value.startswith(SIGNATURE)


def written_by_cohort(path: str | os.PathLike) -> bool:
    """Whether ``path`` (file or directory) carries cohort's marker or signature."""
    p = Path(path)
    if p.is_dir():
        return _marker(p) is not None or _zarr_provenance(p)
    if p.is_file():
        if _file_signature(p):
            return True
        if p.suffix.lower() in SIGNED_SUFFIXES:
            # a format cohort signs: an unsigned file under a name cohort once wrote is the
            # user's own since (a user's PNG saved over a report figure was replaced, a probe)
            return False
        parent = _marker(p.parent)
        return parent is not None and p.name in parent.get("files", [])
    return False


# Formats whose files carry cohort's signature in their content (see _file_signature).
SIGNED_SUFFIXES = frozenset({".nc", ".png", ".md", ".html", ".htm"})


# Suffixes of single-file formats: an output with one of these names was written as a zarr
# folder anyway, and opening it as that format failed (`-o results.nc`, a new user's session).
FILE_SUFFIXES = frozenset(
    ".csv .tsv .txt .nc .nc4 .h5 .hdf5 .json .parquet .xlsx .xls .npy .npz .pkl .png .pdf "
    ".md .html".split()
)


def check_store_name(path: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse a zarr store path named like a single file (``results.csv``, ``run.nc``)."""
    if is_url(path):
        return
    suffix = Path(path).suffix.lower()
    if suffix in FILE_SUFFIXES:
        raise OutputError(
            f"{flag} {str(path)!r}: cohort writes a zarr store (a folder), not a {suffix} file; "
            f"give a name such as {Path(path).with_suffix('.zarr')} (xarray.open_zarr reads "
            "it; Dataset.to_netcdf or .to_dataframe().to_csv convert it)"
        )


def check_replaceable(
    path: str | os.PathLike | None,
    *,
    overwrite: bool,
    flag: str = "--out",
    resume: bool = False,
    resumable: bool = False,
) -> Path:
    """Check, without touching anything, that an output may be written at ``path``: it is
    new, or ``resume`` continues it, or ``overwrite`` replaces something cohort wrote.
    Otherwise an :class:`OutputError` names the path and what to do."""
    p = check_path(path, flag)
    if not p.exists() or resume or is_empty_directory(p):  # nothing there to lose
        return p
    if not overwrite:
        if not written_by_cohort(p):  # --overwrite would be refused too: do not suggest it
            raise OutputError(
                f"{flag} {str(path)!r} already exists and was not written by cohort; choose "
                "another path (cohort never replaces what it did not write)"
            )
        again = "pass --resume (resume=True) to continue an interrupted run, " if resumable else ""
        raise OutputError(
            f"{flag} {str(path)!r} already exists; {again}pass --overwrite (overwrite=True) to "
            "replace it, or choose another path"
        )
    if p.is_symlink():  # replacing would swap the user's link for a folder, or its target
        raise OutputError(
            f"{flag} {str(path)!r} is a symbolic link (to {str(p.resolve())!r}); --overwrite "
            "replaces only a real path: give the link's target, or choose another path"
        )
    if not written_by_cohort(p):
        raise OutputError(
            f"{flag} {str(path)!r} exists and was not written by cohort; refusing to replace it "
            "even with --overwrite. Move it away or choose another path"
        )
    return p


def is_empty_directory(p: Path) -> bool:
    """An existing directory with nothing in it (e.g. made for the output beforehand)."""
    try:
        return p.is_dir() and not p.is_symlink() and next(p.iterdir(), None) is None
    except OSError:
        return False


def prepare_output(
    path: str | os.PathLike | None,
    *,
    overwrite: bool,
    flag: str = "--out",
    resume: bool = False,
    resumable: bool = False,
) -> Path:
    """:func:`check_replaceable`, then remove what ``overwrite`` replaces (never with
    ``resume``: the caller reopens it)."""
    if is_url(path):
        return remote_prepare(str(path), overwrite=overwrite, resume=resume, flag=flag)  # type: ignore[return-value]
    p = check_replaceable(path, overwrite=overwrite, flag=flag, resume=resume, resumable=resumable)
    if p.exists() and not resume and not is_empty_directory(p):  # an empty one is written into
        if p.is_dir():
            refuse_strays(flag, str(path), foreign_files(p))
            shutil.rmtree(p)
        else:
            p.unlink()
    return p


def check_strays(path: Path, flag: str = "--out") -> None:
    """Refuse (naming them) the files in the existing cohort directory ``path`` that cohort
    did not write, before anything replaces it."""
    if path.is_dir() and not is_empty_directory(path):
        refuse_strays(flag, str(path), foreign_files(path))


def swap_into_place(tmp: Path, path: Path) -> None:
    """Put the complete new output ``tmp`` at ``path``, whose old content (checked as
    replaceable before) is removed only once the new one is in place: a process killed
    during an --overwrite left neither (the old one was deleted before the new one was
    written; a probe). A file is replaced atomically; a directory is moved aside to
    ``.NAME.replaced`` first, which a later run removes (a kill in between leaves the old
    result there, never lost)."""
    if not (path.is_dir() and not is_empty_directory(path)):
        if path.is_dir():
            path.rmdir()
        os.replace(tmp, path)
        return
    aside = path.with_name(f".{path.name}.replaced")
    clear_leftover(
        aside,
        "replaced output of an earlier run",
        "(where an output being replaced is moved aside) exists and was not written by cohort; "
        "move it away",
    )
    os.replace(path, aside)
    os.replace(tmp, path)
    shutil.rmtree(aside)


def clear_leftover(p: Path, what: str, refusal: str) -> None:
    """Remove ``p``, a temporary name cohort writes under, where a killed run left it (a
    directory cohort wrote and nothing else, or an HDF5 file with cohort's signature);
    anything else there is the user's: refused, ``refusal`` saying why and what to do."""
    if p.is_dir() and written_by_cohort(p):
        remove_own(p, what)
    elif p.is_file() and hdf5_signed(p):
        p.unlink()
    elif p.exists() or p.is_symlink():
        raise OutputError(f"{str(p)!r} {refusal}")


def remove_own(p: Path, what: str) -> None:
    """Delete the directory ``p`` that cohort wrote and now replaces by itself (a checkpoint of
    another computation, a partial group of an interrupted save), unless it holds files
    cohort did not write: those are named and nothing is deleted."""
    refuse_strays(
        what, str(p), foreign_files(p), deleting="cohort would replace it", other="output"
    )
    shutil.rmtree(p)


def _own_nodes(p: Path) -> set[str] | None:
    """The top-level members cohort wrote into the store at ``p`` (:data:`NODES` and a trial's
    groups), or None for a store that does not record them."""
    attrs = root_attributes(p) or {}
    if not isinstance(attrs.get(NODES), list):
        return None
    own = set(attrs[NODES])
    for key in ("groups_planned", "groups_done"):  # cohort.trial.groups (a JSON list)
        try:
            own |= set(json.loads(attrs.get(key, "[]")))
        except (TypeError, ValueError):
            pass
    return own


def foreign_files(p: Path) -> list[str]:
    """Files inside the cohort directory ``p`` that cohort did not write, relative to ``p``:
    anything but zarr metadata (and the temporary files of a killed zarr write), the chunks
    inside zarr arrays, cohort's marker and the files the marker lists (a user's notes
    dropped into a store were deleted by ``--overwrite``)."""
    found: list[str] = []
    own = _own_nodes(p)
    for root, dirs, files in os.walk(p):
        here = Path(root)
        dirs.sort()
        if own is not None and here == p:  # the user's groups or arrays beside cohort's
            found += [d for d in dirs if d not in own]
            dirs[:] = [d for d in dirs if d in own]
        links = [d for d in dirs if (here / d).is_symlink()]  # a user's link to a folder
        found += [(here / d).relative_to(p).as_posix() for d in links]
        dirs[:] = [d for d in dirs if d not in links]
        if ".zarray" in files or _is_zarr_array(here / "zarr.json"):
            dirs[:] = []  # an array's folder holds its metadata and chunks, nothing else
            found += [(here / rel).relative_to(p).as_posix() for rel in _not_chunks(here)]
            continue
        marker = _marker(here) if MARKER in files else None
        listed = set(marker.get("files", [])) if marker else set()  # names in this folder
        for name in sorted(files):
            if name in ZARR_META or name in (MARKER, f"{MARKER}.tmp") or name in listed:
                continue
            if ZARR_TEMP.fullmatch(name):  # a killed zarr metadata write's temporary file
                continue
            found.append((here / name).relative_to(p).as_posix())
    return sorted(found)


def remove_zarr_leftovers(p: Path) -> int:
    """Remove the temporary files a killed zarr write left in the cohort store ``p`` (see
    :data:`~cohort.store.keys.ZARR_TEMP`); returns how many. Call with the store's lock held."""
    removed = 0
    for root, _, names in os.walk(p):
        for name in names:
            if ZARR_TEMP.fullmatch(name):
                (Path(root) / name).unlink(missing_ok=True)
                removed += 1
    return removed


def _not_chunks(array_dir: Path) -> list[str]:
    """Files in a zarr array's folder that are neither its metadata nor its chunks (a user's
    file dropped there was deleted by ``--overwrite``), relative to the folder."""
    files = []
    for root, dirs, names in os.walk(array_dir):
        dirs.sort()
        links = [d for d in dirs if (Path(root) / d).is_symlink()]  # never a chunk folder
        files += [(Path(root) / n).relative_to(array_dir).as_posix() for n in names + links]
    strays = stray_files(files, {""})
    grid = _chunk_grid(array_dir)
    if grid is not None:  # a name shaped like a chunk key must also be one of the array's
        seen = set(strays)
        strays += [f for f in files if f not in seen and _off_grid(f, *grid)]
    return sorted(strays)


def _chunk_grid(array_dir: Path) -> tuple[list[int], str, str] | None:
    """``(chunks per dimension, key prefix, separator)`` of the zarr array in ``array_dir``,
    or None where its metadata is not the regular grid cohort writes (then any chunk-shaped
    name passes, as before). A user's ``c/2026`` in an array of 5 chunks was deleted as a
    chunk (a probe)."""
    try:
        if (array_dir / "zarr.json").is_file():
            meta = json.loads((array_dir / "zarr.json").read_text())
            shape = meta["shape"]
            chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
            enc = meta.get("chunk_key_encoding", {})
            sep = enc.get("configuration", {}).get(
                "separator", "/" if enc.get("name", "default") == "default" else "."
            )
            prefix = "c" if enc.get("name", "default") == "default" else ""
        else:
            meta = json.loads((array_dir / ".zarray").read_text())
            shape, chunks = meta["shape"], meta["chunks"]
            sep, prefix = meta.get("dimension_separator") or ".", ""
        counts = [-(-int(n) // max(int(c), 1)) for n, c in zip(shape, chunks, strict=True)]
        return counts, prefix, sep
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _off_grid(rel: str, counts: list[int], prefix: str, sep: str) -> bool:
    """Whether the file ``rel`` (relative to its array's folder) is not a chunk key of a grid
    of ``counts`` chunks (metadata and zarr's temporary files are not keys either)."""
    name = rel.rpartition("/")[2]
    if name in ZARR_META or ZARR_TEMP.fullmatch(name):
        return False
    key = rel.replace("/", sep) if sep != "/" else rel
    parts = key.split(sep) if key else []
    if prefix:
        if not parts or parts[0] != prefix:
            return True
        parts = parts[1:]
    if not counts:  # a 0-d array: the prefix alone, or "0"
        return parts not in ([], ["0"]) if prefix else parts != ["0"]
    if len(parts) != len(counts) or not all(p.isdigit() for p in parts):
        return True
    return any(int(p) >= c for p, c in zip(parts, counts, strict=True))


def _is_zarr_array(meta: Path) -> bool:
    try:
        return json.loads(meta.read_text()).get("node_type") == "array"
    except (OSError, ValueError, AttributeError):
        return False


def mark_directory(path: str | os.PathLike, kind: str) -> None:
    """Create ``path`` if needed and write its marker (kept if already there)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    if _marker(p) is None:
        _write_marker(p, {"writer": SIGNATURE, "kind": kind, "files": []})


def _write_marker(p: Path, data: dict) -> None:
    tmp = p / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, p / MARKER)


def claim_file(
    directory: str | os.PathLike, name: str, *, overwrite: bool, flag: str = "--report"
) -> Path:
    """A file ``name`` inside a cohort directory, safe to (over)write: an existing file is
    replaced only with ``overwrite`` and only when cohort wrote it. The name is recorded in the
    directory's marker."""
    d = Path(directory)
    target = d / name
    if target.resolve().parent != d.resolve():
        raise OutputError(f"{flag}: {name!r} would be written outside {str(d)!r}")
    check_replaceable(target, overwrite=overwrite, flag=flag)
    marker = _marker(d)
    if marker is not None and name not in marker.get("files", []):
        marker["files"] = [*marker.get("files", []), name]
        _write_marker(d, marker)
    return target


def report_directory(
    path: str | os.PathLike | None, *, overwrite: bool, flag: str, create: bool = True
) -> Path:
    """A directory for several output files: new, empty or cohort's own; an existing directory
    holding other files is refused (the user's files are never mixed with ours). With
    ``create=False`` only checked (a command checks before its work and creates the folder
    when it writes, so a failed command leaves no empty folder behind)."""
    p = check_path(path, flag)
    if p.exists():
        if p.is_file():
            raise OutputError(f"{flag} {str(path)!r} is a file; give a directory")
        if any(p.iterdir()) and _marker(p) is None:
            raise OutputError(
                f"{flag} {str(path)!r} exists, is not empty and was not written by cohort; "
                "choose a new directory"
            )
    if create:
        mark_directory(p, "report")
    return p
