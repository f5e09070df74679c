"""zarr v3 stores of simulation results, read back as xarray Datasets; output safety and locks."""

from cohort.errors import StoreError
from cohort.store.lock import locks_output, write_lock
from cohort.store.safety import (
    check_path,
    check_replaceable,
    claim_file,
    mark_directory,
    prepare_output,
    report_directory,
    written_by_cohort,
)

# zarr costs ~0.3 s to import: the zarr layer loads when first used, so a command can import
# it while XLA compiles its program (cohort.engine.simulate creates its store then)
_ZARR_NAMES = ("ID_ATTRS", "ResultStore", "indexed_coordinates", "open_result")


def __getattr__(name: str):
    if name in _ZARR_NAMES:
        from cohort.store import zarr_store

        return getattr(zarr_store, name)
    raise AttributeError(f"module 'cohort.store' has no attribute {name!r}")


__all__ = [
    "ID_ATTRS",
    "ResultStore",
    "StoreError",
    "check_path",
    "check_replaceable",
    "claim_file",
    "locks_output",
    "mark_directory",
    "indexed_coordinates",
    "open_result",
    "prepare_output",
    "report_directory",
    "write_lock",
    "written_by_cohort",
]
