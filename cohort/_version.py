"""The package version (one place; ``cohort.__version__`` and ``cohort --version`` read it)."""

__version__ = "0.1.0"
