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


def read_toml(path: str | Path, error: type[Exception], what: str) -> tuple[dict[str, Any], str]:
    """``(contents, sha256 prefix)`` of the TOML file ``path``; ``error(message)`` (naming the
    file) for a missing, unreadable or malformed one. ``what`` says what the file should be."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such {what}")
    if not path.is_file():
        raise error(f"{path}: not a file (a {what} is a TOML file)")
    data = path.read_bytes()
    try:
        raw = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
    return raw, hashlib.sha256(data).hexdigest()[:16]
