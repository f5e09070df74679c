"""Stores beyond the local disk: any fsspec URL (``s3://bucket/runs/x.zarr``, ``gs://``,
``abfs://``, a shared filesystem as ``file:///mnt/shared/x.zarr``, ...).

zarr and xarray open such URLs through fsspec themselves; this module gives them the same
safety rules as local paths: an existing store is replaced only when cohort wrote it and
``overwrite`` says so, unclear targets (a bucket's root, ``..`` segments) are refused, and
credentials come only from the environment or the filesystem's own configuration (a URL
carrying a user name or password is refused, so no secret ever reaches a log or an error
message). Object stores have no exclusive create, so the write lock of a URL is advisory: a
lock object beside the store names its writer, and a second writer is refused while it exists.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from cohort.errors import OutputError
from cohort.store.keys import refuse_strays, stray_files

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: Any) -> bool:
    """Whether ``path`` names a store by URL (``scheme://...``) rather than a local path."""
    return isinstance(path, str) and bool(_SCHEME.match(path.strip()))


def filesystem(url: str, flag: str = "--out") -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the store's root path in it, after the checks in
    the module docstring."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise OutputError(
            f"{flag}: the URL carries credentials; remove them and give them in the "
            "environment (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the "
            "filesystem's own configuration file)"
        )
    if ".." in parts.path.split("/"):
        raise OutputError(f"{flag} {url!r}: '..' in a store URL is refused; give the full path")
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise OutputError(
            f"{flag} {url!r}: the {parts.scheme}:// filesystem needs a package that is not "
            f"installed ({exc}); e.g. pip install s3fs for s3://"
        ) from None
    except ValueError as exc:
        raise OutputError(f"{flag} {url!r}: {exc}") from None
    root = root.rstrip("/")
    if root.count("/") < (2 if root.startswith("/") else 1):
        raise OutputError(
            f"{flag} {url!r}: refusing to write at the top of a bucket or filesystem; give a "
            "store inside a folder, e.g. s3://bucket/runs/cohort.zarr"
        )
    return fs, root


def storage_options(url: str) -> dict[str, Any]:
    """Options zarr passes to the URL's filesystem: a local one must create the folders of
    the chunks it writes (object stores have no folders)."""
    return {"auto_mkdir": True} if urlsplit(url.strip()).scheme in ("file", "local") else {}


def root_attributes(url: str) -> dict | None:
    """The root attributes of the zarr v3 store at ``url`` (None: no readable store)."""
    fs, root = filesystem(url)
    try:
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    return attrs if isinstance(attrs, dict) else {}


def exists(url: str) -> bool:
    fs, root = filesystem(url)
    return bool(fs.exists(root))


def written_by_cohort(url: str) -> bool:
    attrs = root_attributes(url) or {}
    return attrs.get("written_by") == "cohort" or "cohort_version" in attrs


def prepare(url: str, *, overwrite: bool, resume: bool, flag: str = "--out") -> str:
    """Check that a store may be written at ``url`` and remove what ``overwrite`` replaces
    (only a store cohort wrote); returns the URL."""
    fs, root = filesystem(url, flag)
    if not fs.exists(root) or resume:
        return url.strip()
    if not overwrite:
        raise OutputError(
            f"{flag} {url!r} already exists; pass --resume (resume=True) to continue an "
            "interrupted run, --overwrite (overwrite=True) to replace it, or choose another path"
        )
    if not written_by_cohort(url):
        raise OutputError(
            f"{flag} {url!r} exists and was not written by cohort; refusing to replace it even "
            "with --overwrite. Move it away or choose another path"
        )
    refuse_strays(flag, url, _stray_objects(fs, root), "objects")
    fs.rm(root, recursive=True)
    return url.strip()


def _stray_objects(fs, root: str) -> list[str]:
    """Objects under the store ``root`` that are neither zarr metadata nor array chunks."""
    files = [f[len(root) :].lstrip("/") for f in fs.find(root)]
    arrays = set()
    for rel in files:
        folder, _, name = rel.rpartition("/")
        if name == "zarr.json":
            try:
                if json.loads(fs.cat_file(f"{root}/{rel}")).get("node_type") == "array":
                    arrays.add(folder)
            except (OSError, ValueError, AttributeError):
                pass
        elif name == ".zarray":
            arrays.add(folder)
    return stray_files(files, arrays)


def remove(url: str) -> None:
    """Remove the store at ``url`` (callers check first that cohort wrote it)."""
    fs, root = filesystem(url)
    fs.rm(root, recursive=True)


@contextlib.contextmanager
def write_lock(url: str) -> Iterator[None]:
    """The advisory write lock of the store at ``url``: a lock object ``.<name>.lock`` beside
    it, naming the writer; refused while another writer's lock exists."""
    fs, root = filesystem(url)
    parent, name = root.rsplit("/", 1)
    lock = f"{parent}/.{name}.lock"
    host = socket.gethostname()
    if fs.exists(lock):
        try:
            held = json.loads(fs.cat_file(lock))
        except (OSError, ValueError):
            held = {}
        if held.get("pid") == os.getpid() and held.get("host") == host:
            yield  # our own lock: re-entered (a trial holds it around its simulation)
            return
        raise OutputError(
            f"{url!r} is being written by process {held.get('pid')} on host "
            f"{held.get('host')!r} since {held.get('started')}; wait for it or choose another "
            f"path (if that writer is gone, delete the lock object {lock!r})"
        )
    owner = {
        "pid": os.getpid(),
        "host": host,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(lock, json.dumps(owner).encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fs.rm(lock)
