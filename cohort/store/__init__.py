"""zarr v3 stores of simulation results, read back as xarray Datasets; output safety and locks."""

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
from cohort.store.zarr_store import (
    ID_ATTRS,
    ResultStore,
    StoreError,
    indexed_coordinates,
    open_result,
)

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
