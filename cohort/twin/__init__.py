"""Digital twins: individual posteriors from a population prior and each patient's records,
updated as data arrive, forecasting with credible bands and recommending doses.

``Twins.identify(prior, records)`` → ``twins.update(new)`` → ``twins.forecast(regimen,
times, targets=...)`` → ``twins.recommend(template, target)``; ``twins.save(path)`` and
:func:`open_twins` keep the state (and every earlier update) in a zarr store.
"""

from cohort.twin.prior import TwinError, TwinPrior
from cohort.twin.twins import Twins

__all__ = ["TwinError", "TwinPrior", "Twins", "open_twins"]


def open_twins(path, update=None):
    """Reopen twins saved with :meth:`Twins.save` (the latest update, or ``update``)."""
    from cohort.twin.store import open_twins as _open

    return _open(path, update)
