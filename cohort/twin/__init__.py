"""Digital twins: individual posteriors from a population prior and each patient's records,
updated as data arrive, forecasting with credible bands and recommending doses.

``Twins.identify(prior, records)`` → ``twins.update(new)`` → ``twins.forecast(regimen,
times, targets=...)`` → ``twins.recommend(template, target)``; ``twins.save(path)`` and
:func:`open_twins` keep the state (and every earlier update) in a zarr store.
Type 1 diabetes twins from CGM records: ``CGMTwins.identify(prior, records)`` →
``update(next_day)`` → ``replay(bolus_scale=0.8, basal_scale=1.2)``.
"""

from cohort.twin.cgm import CGMTwins
from cohort.twin.checkpoint import KeptCheckpoint
from cohort.twin.prior import TwinError, TwinPrior
from cohort.twin.twins import Twins

__all__ = ["CGMTwins", "KeptCheckpoint", "TwinError", "TwinPrior", "Twins", "open_twins"]


def open_twins(path, update=None):
    """Reopen twins saved with :meth:`Twins.save` (the latest update, or ``update``)."""
    from cohort.twin.store import open_twins as _open

    return _open(path, update)
