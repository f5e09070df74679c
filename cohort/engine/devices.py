"""The engine's view of the devices: re-exports :mod:`cohort.devices` (kept for existing
imports of ``cohort.engine.devices``)."""

from cohort.devices import available_cores, host_devices_for_chains, use_cpu_cores

__all__ = ["available_cores", "host_devices_for_chains", "use_cpu_cores"]
