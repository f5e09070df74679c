"""In-silico clinical trials from ``experiments/*.toml`` specs.

``run(spec, out=None, seed=None)`` simulates every arm of every replicate trial as one
vectorized cohort; ``analyze(result)`` gives per-replicate estimates, p-values and power with
Monte Carlo CIs; ``report(result, path)`` writes a Markdown report with PNG figures. Design
pieces (allocation, group-sequential boundaries, dose escalation) are usable on their own.
"""

from cohort.trial.analysis import Analysis, analyze, pta, sample_size
from cohort.trial.design import allocate
from cohort.trial.escalation import escalate
from cohort.trial.pta import dose_pta
from cohort.trial.report import report
from cohort.trial.run import TrialResult, open_trial, run
from cohort.trial.sequential import boundaries
from cohort.trial.spec import TrialSpec, TrialSpecError, load, parse

__all__ = [
    "Analysis",
    "TrialResult",
    "TrialSpec",
    "TrialSpecError",
    "allocate",
    "analyze",
    "boundaries",
    "dose_pta",
    "escalate",
    "load",
    "open_trial",
    "parse",
    "pta",
    "report",
    "run",
    "sample_size",
]
