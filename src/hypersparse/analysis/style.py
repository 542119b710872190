"""One look for every figure: method -> colour / marker / label, fonts and sizes.

Known methods get a fixed, hand-picked colour so a method looks the same in every figure;
unknown (user-added) methods get a deterministic fallback colour derived from a hash of the
name (stable across processes, unlike Python's ``hash``).
"""

from __future__ import annotations

import colorsys
import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import matplotlib

# Figures are files: use the non-interactive Agg backend (batch / cluster friendly), unless
# the user chose a backend (MPLBACKEND) or works in a notebook.
if "MPLBACKEND" not in os.environ and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANEL_WIDTH_IN = 3.5  # one column of a two-column paper
PANEL_HEIGHT_IN = 2.5
PNG_DPI = 200

# Font sizes >= 7 pt at the printed size; PDF fonts embedded as TrueType (editable text).
RC: dict[str, object] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.3,
    "lines.markersize": 4,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    # No "tight" bbox: figures use constrained layout with legends placed "outside", which
    # keeps everything inside the canvas and saves one extra draw per file.
}

# (colour, marker, label) for the methods the project knows; order = table/legend order.
_KNOWN: dict[str, tuple[str, str, str]] = {
    "dense": ("#000000", "s", "Dense"),
    "art_hs": ("#d62728", "o", "ART + HS"),
    "art_l1": ("#e377c2", "v", "ART + L1"),
    "art_l2": ("#8c564b", "^", "ART + L2"),
    "omp": ("#1f77b4", "D", "OMP"),
    "lth": ("#17becf", "P", "LTH"),
    "gmp": ("#9467bd", "X", "GMP"),
    "rigl": ("#2ca02c", "*", "RigL"),
    "acdc": ("#bcbd22", "h", "AC/DC"),
    "snip": ("#ff7f0e", "<", "SNIP"),
    "grasp": ("#c49c94", ">", "GraSP"),
    "synflow": ("#98df8a", "p", "SynFlow"),
    "smart_ratio": ("#aec7e8", "d", "Smart-Ratio"),
    "random": ("#7f7f7f", "x", "Random"),
    "xrda": ("#393b79", "+", "xRDA"),
    "xrda_at_kappa": ("#6b6ecf", "1", "xRDA @ kappa"),
}
METHOD_ORDER: tuple[str, ...] = tuple(_KNOWN)
ART_METHODS: tuple[str, ...] = ("art_hs", "art_l1", "art_l2")
_FALLBACK_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def _digest(name: str) -> int:
    """A process-independent integer hash of ``name``."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16)


def method_color(method: str) -> str:
    """Hex colour of a method: fixed for known methods, hash-derived for others."""
    if method in _KNOWN:
        return _KNOWN[method][0]
    h = _digest(method)
    hue = (h % 360) / 360.0
    light = 0.35 + ((h >> 9) % 20) / 100.0  # 0.35 .. 0.54: readable on white
    r, g, b = colorsys.hls_to_rgb(hue, light, 0.65)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def method_marker(method: str) -> str:
    """Marker of a method (fixed for known methods, hash-derived otherwise)."""
    if method in _KNOWN:
        return _KNOWN[method][1]
    return _FALLBACK_MARKERS[_digest(method) % len(_FALLBACK_MARKERS)]


def method_label(method: str) -> str:
    """Human-readable method name for legends and tables (the run label if unknown)."""
    return _KNOWN[method][2] if method in _KNOWN else method


def sort_methods(methods: Iterable[str]) -> list[str]:
    """Known methods in METHOD_ORDER, then unknown ones alphabetically."""
    uniq = set(methods)
    known = [m for m in METHOD_ORDER if m in uniq]
    return known + sorted(uniq - set(known))


def kappa_percent(kappa: float) -> str:
    """Pruning rate as a percentage label without trailing zeros: 0.995 -> '99.5%'."""
    return f"{round(float(kappa) * 100, 6):g}%"


def save_figure(fig: plt.Figure, out_base: Path) -> list[Path]:
    """Save ``fig`` as out_base.pdf (vector) and out_base.png (PNG_DPI), close it, return paths."""
    out_base = Path(out_base)
    if out_base.suffix.lower() in (".png", ".pdf"):  # tolerate a base given with an extension
        out_base = out_base.with_suffix("")
    out_base.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_base.with_name(out_base.name + ".pdf"), out_base.with_name(out_base.name + ".png")]
    fig.savefig(paths[0])
    fig.set_layout_engine("none")  # positions are final after the first draw; skip re-solving
    fig.savefig(paths[1], dpi=PNG_DPI)
    plt.close(fig)
    return paths
