"""NONMEM-style patient data: reading, validation (row/column errors) and padded arrays."""

from cohort.data.dataset import Dataset, Observations, read_nonmem
from cohort.data.reader import DataError, Problem

__all__ = ["DataError", "Dataset", "Observations", "Problem", "read_nonmem"]
