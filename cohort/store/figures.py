"""The one way cohort writes a figure: PNG with cohort's signature (so ``--overwrite`` may
replace it later, see :mod:`cohort.store.safety`), parent folder created, figure closed.

The PNG is written to a temporary file beside it and renamed into place: a process killed
while matplotlib wrote it left an empty, unsigned PNG under the figure's name, which no rerun
would replace (``--resume`` and ``--overwrite`` both refused it as not cohort's; a probe)."""

from __future__ import annotations

import os
from pathlib import Path

from cohort.store.safety import SIGNATURE, written_by_cohort


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out ``fig`` (a matplotlib Figure), write it to ``path`` as PNG and close it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.canvas is None or not hasattr(fig.canvas, "print_png"):
        FigureCanvasAgg(fig)
    fig.tight_layout()
    if written_by_cohort(path.parent):  # a killed save's temporary files: ours, named so
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": SIGNATURE})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
