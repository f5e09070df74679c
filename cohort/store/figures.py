"""The one way cohort writes a figure: PNG with cohort's signature (so ``--overwrite`` may
replace it later, see :mod:`cohort.store.safety`), parent folder created, figure closed."""

from __future__ import annotations

from pathlib import Path

from cohort.store.safety import SIGNATURE


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out ``fig`` (a matplotlib Figure), write it to ``path`` as PNG and close it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.canvas is None or not hasattr(fig.canvas, "print_png"):
        FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png", metadata={"Software": SIGNATURE})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
