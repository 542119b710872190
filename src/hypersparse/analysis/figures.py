"""Figures from run folders only: each writes out_base.pdf (vector) and out_base.png.

Every figure function has the signature ``f(runs_root, out_base, **opts) -> list[Path]`` and
is registered in FIGURES; they live by subject in :mod:`figs_sparsity` (every grid) and
:mod:`figs_art` (ART traces), run selection in :mod:`pick` and shared panels in :mod:`panels`.
Partial data (missing methods or seeds) is drawn as far as it goes; a figure raises
NothingToPlotError, naming the run it needs, only when nothing can be drawn. Captions live in
workflow/report/figure.rst (one section per figure).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from hypersparse.analysis import style
from hypersparse.analysis.figs_art import art_termination, exploration, hs_gradient, magnitudes
from hypersparse.analysis.figs_sparsity import (
    acc_vs_flops,
    acc_vs_sparsity,
    kernel_patterns,
    layer_density,
)
from hypersparse.analysis.pick import NothingToPlotError

__all__ = ["FIGURES", "NothingToPlotError", "placeholder_figure", "plot_figure"]


FIGURES: dict[str, Callable[..., list[Path]]] = {
    "acc_vs_sparsity": acc_vs_sparsity,
    "acc_vs_flops": acc_vs_flops,
    "hs_gradient": hs_gradient,
    "exploration": exploration,
    "art_termination": art_termination,
    "layer_density": layer_density,
    "kernel_patterns": kernel_patterns,
    "magnitudes": magnitudes,
}


def placeholder_figure(out_base: Path, message: str) -> list[Path]:
    """A figure that says why there is nothing to plot (e.g. every ART run diverged)."""
    fig, ax = plt.subplots(figsize=(style.PANEL_WIDTH_IN, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, "nothing to plot:\n" + message, ha="center", va="center", wrap=True,
            fontsize=7)
    return style.save_figure(fig, Path(out_base))


def plot_figure(name: str, runs_root: Path, out_base: Path, **opts: Any) -> list[Path]:
    """Draw figure ``name`` from the run folders under ``runs_root``; returns [pdf, png]."""
    if name not in FIGURES:
        raise KeyError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)}")
    return FIGURES[name](Path(runs_root), Path(out_base), **opts)
