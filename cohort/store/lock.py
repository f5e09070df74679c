"""Advisory write locks: one writer per output, and a lock left by a dead process is noticed.

The lock is a sibling file ``.<name>.lock`` (outside the output, so replacing the output cannot
remove another writer's lock) created with ``O_EXCL`` and holding the owner's PID, host and
start time. A second writer is refused with who holds the lock. A lock whose owner is a dead
process on this host is reported (a :class:`~cohort.CohortWarning`) and taken over by one
writer (the check and the removal hold a ``flock`` on the folder, so two writers that both
found it stale do not both go on); a lock from another host cannot be checked and is refused
with how to remove it. The same process may
re-enter its own lock (``trial.run`` holds it around ``simulate``).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import json
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from cohort.errors import CohortWarning, OutputError
from cohort.store import remote
from cohort.store.remote import is_url
from cohort.store.safety import check_path

F = TypeVar("F", bound=Callable)


def lock_path(path: str | os.PathLike) -> Path:
    """The lock of output ``path``, named after its real location: a symlink, a trailing
    slash or ``..`` in the path must not let a second writer take another lock on the same
    store (two writers through ``lnk -> run.zarr`` and ``run.zarr`` both ran)."""
    p = Path(path).expanduser().resolve()
    return p.parent / f".{p.name}.lock"


def _read(lock: Path) -> dict | None:
    try:
        data = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return not _zombie(pid)
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but not been reaped (Linux state ``Z``): ``kill(pid, 0)``
    still succeeds for it, and where nothing reaps (a container whose PID 1 does not) a
    killed writer's lock would never count as stale."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):  # no /proc (macOS): kill(pid, 0) is all there is
        return False


def _try_create(lock: Path, owner: dict) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise OutputError(
            f"cannot write in {str(lock.parent)!r} ({exc.strerror}); choose a writable location"
        ) from None
    with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
    return True


@contextlib.contextmanager
def write_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the write lock of output ``path`` for the duration of the block."""
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{str(path)!r}: cannot create the folder {str(lock.parent)!r} ({exc.strerror}); "
            "choose a writable location"
        ) from None
    host = socket.gethostname()
    owner = {
        "pid": os.getpid(),
        "host": host,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    created = False
    for _ in range(3):
        if _try_create(lock, owner):
            created = True
            break
        held = _read(lock)
        if held is None:
            # Being written by its creator this instant, or not ours: look once more.
            continue
        if held.get("host") == host and held.get("pid") == os.getpid():
            break  # our own lock: re-entered
        if held.get("host") == host and not _alive(int(held.get("pid", -1))):
            with _serialized(lock.parent):
                # Still the dead process's lock? Two writers that both read it must not both
                # remove it: the second would remove the first's fresh lock (both then ran).
                if _read(lock) == held:
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()
                    warnings.warn(
                        f"{str(path)!r}: removed a stale write lock left by process "
                        f"{held.get('pid')} (started {held.get('started')}), which is no "
                        "longer running",
                        CohortWarning,
                        stacklevel=3,
                    )
            continue
        where = "" if held.get("host") == host else f" on host {held.get('host')!r}"
        raise OutputError(
            f"{str(path)!r} is being written by process {held.get('pid')}{where} since "
            f"{held.get('started')}; wait for it to finish or choose another path (if that "
            f"process is gone, delete {str(lock)!r})"
        )
    else:
        raise OutputError(
            f"{str(path)!r}: could not take the write lock {str(lock)!r}; if no cohort process "
            "is writing there, delete that file"
        )
    try:
        yield
    finally:
        if created:
            with _serialized(lock.parent):
                if _read(lock) == owner:  # ours still (never another writer's lock)
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()


@contextlib.contextmanager
def _serialized(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` while a lock file is checked and removed, so
    that no other process removes or replaces it between the check and the removal. The
    kernel drops it if the process dies. Where folders cannot be locked (no ``fcntl``, some
    network file systems) this is a no-op: the lock is then as before, advisory."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def locks_output(argument: str = "out", flag: str = "--out") -> Callable[[F], F]:
    """Decorator: hold the write lock of the function's ``argument`` (an output path, or None
    for an in-memory result) while it runs; the path is checked first (:func:`check_path`)."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            path = signature.bind(*args, **kwargs).arguments.get(argument)
            if path is None:
                return fn(*args, **kwargs)
            if is_url(path):
                check_path(path, flag)
                with remote.write_lock(str(path)):
                    return fn(*args, **kwargs)
            with write_lock(check_path(path, flag)):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap
