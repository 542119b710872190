"""Panel scaffolding shared by the figures: one column of panels per method, the legend
under the panels, "not run" panels, the ART epoch marks and the colour of empty cells."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from hypersparse.analysis import style

NEVER = "0.85"  # heat-map cells with nothing in them: a disconnected layer, a dead position


def method_panels(n: int, rows: int, *, col_width: float, height: float, **share: object
                  ) -> tuple[plt.Figure, np.ndarray]:
    """A figure with one column of ``rows`` panels per method (``n`` columns; never narrower
    than one standard panel), constrained layout; ``share`` as for ``plt.subplots``."""
    return plt.subplots(rows, n, figsize=(max(col_width * n, style.PANEL_WIDTH_IN), height),
                        layout="constrained", squeeze=False, **share)


def no_data_panel(ax: plt.Axes, text: str) -> None:
    """A panel that only says ``text`` (e.g. \"not run\")."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.grid(False)


def legend_below(fig: plt.Figure, handles: list, labels: list, ncol: int) -> None:
    """Figure legend under the panels, so it never covers data."""
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=ncol,
        frameon=False,
        handlelength=2.0,
        columnspacing=1.2,
    )


def mark_epochs(ax: plt.Axes, sel: int | None, term: int | None) -> None:
    """ART's selected (dotted) and termination (solid) epochs as vertical lines."""
    if term is not None:
        ax.axvline(term, color="0.2", ls="-", lw=0.9, alpha=0.7)
    if sel is not None:
        ax.axvline(sel, color="0.2", ls=":", lw=1.1)
