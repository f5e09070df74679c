"""The package version and a digest of cohort's own source (one place each; ``cohort.__version__``,
``cohort --version``, the compilation caches and the Dask worker check read them)."""

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


@functools.cache
def source_digest() -> str:
    """SHA-256 of every Python file of the cohort package (paths and contents): what a cached
    program or a remote worker must match to run this code."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()
