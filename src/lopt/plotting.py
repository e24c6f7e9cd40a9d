"""One figure style for every notebook (seaborn) and one way to save figures into ``figures/``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

import matplotlib.pyplot as plt
import seaborn as sns

from . import config

PALETTE = "viridis"


def setup(context: str = "notebook") -> None:
    """Apply the project's seaborn style (call once at the top of a notebook)."""
    sns.set_theme(context=context, style="whitegrid", palette="deep")
    matplotlib.rcParams.update(
        {"figure.dpi": 100, "savefig.dpi": 110, "savefig.bbox": "tight", "axes.titlesize": "medium"}
    )


def savefig(fig: plt.Figure, name: str) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` (below :func:`lopt.config.output_dir`)."""
    path = config.output_dir() / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def subplots(nrows: int = 1, ncols: int = 1, width: float = 4.0, height: float = 3.2, **kw):
    """``plt.subplots`` with panel sizes in inches per panel (the paper's small multiples),
    constrained layout and always a 2D array of axes."""
    kw.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
