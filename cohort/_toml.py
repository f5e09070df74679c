"""The one spec reader: TOML files (``tomllib`` only) with the file named in every error and a
content hash for provenance, shared by population priors, trial specs and future specs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib


SHIPPED = ("priors", "experiments")  # the repository's spec folders, shipped in the wheel


def shipped_folders(kind: str | None = None) -> list[Path]:
    """Where cohort's own specs of ``kind`` (``priors``, ``experiments``; None: both) are:
    ``cohort/_shipped/<kind>`` in an installed wheel (``pyproject.toml`` force-includes them),
    else the source checkout's folders beside the package (an editable install)."""
    package = Path(__file__).resolve().parent
    kinds = SHIPPED if kind is None else (kind,)
    for root in (package / "_shipped", package.parent):
        found = [root / k for k in kinds if (root / k).is_dir()]
        if found:
            return found
    return []


def shipped_names(kind: str | None = None) -> list[str]:
    """The names cohort's own specs can be given by (``adult_pk_oral``, ...)."""
    return sorted({f.stem for d in shipped_folders(kind) for f in d.glob("*.toml")})


def resolve(path: str | Path, kind: str | None = None) -> Path:
    """``path``, or for a bare name of one of cohort's own specs of ``kind``
    (``adult_pk_oral`` or ``adult_pk_oral.toml``, not found as given) the shipped file:
    README's examples wrote ``priors/...``, which exists only in a source checkout (a new
    user's session)."""
    p = Path(path)
    if p.exists() or len(p.parts) != 1 or p.suffix not in ("", ".toml"):
        return p
    for folder in shipped_folders(kind):
        candidate = folder / f"{p.stem}.toml"
        if candidate.is_file():
            return candidate
    return p


def read_toml(
    path: str | Path, error: type[Exception], what: str, kind: str | None = None
) -> tuple[dict[str, Any], str, Path]:
    """``(contents, sha256 prefix, path read)`` of the TOML file ``path`` (or of cohort's own
    spec of ``kind`` of that bare name, :func:`resolve`); ``error(message)`` (naming the file) for a
    missing, unreadable or malformed one. ``what`` says what the file should be."""
    path = resolve(path, kind)
    if not path.exists():
        names = shipped_names(kind)
        hint = (
            f" (relative to {Path.cwd()}); cohort's own specs are also found by name alone: "
            + ", ".join(names)
            if names and not path.is_absolute()
            else ""
        )
        raise error(f"{path}: no such {what}{hint}")
    if not path.is_file():
        raise error(f"{path}: not a file (a {what} is a TOML file)")
    data = path.read_bytes()
    try:
        raw = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
    return raw, hashlib.sha256(data).hexdigest()[:16], path
