"""When cohort was first imported: the CLI's startup time where the process's own start time
cannot be trusted (see :func:`cohort.timing.startup_seconds`)."""

import time

IMPORTED_AT = time.perf_counter()
