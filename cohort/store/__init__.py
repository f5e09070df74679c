"""zarr v3 stores of simulation results, read back as xarray Datasets."""

from cohort.store.zarr_store import ResultStore, StoreError, open_result

__all__ = ["ResultStore", "StoreError", "open_result"]
