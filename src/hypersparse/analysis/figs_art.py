"""The ART figures, from the traces of ART runs (art_trace.csv / art_trace.npz): the
HyperSparse gradient, exploration vs exploitation, the termination criterion and the
magnitude distributions (captions: workflow/report/figure.rst)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patches as mpatches
from matplotlib import ticker

from hypersparse.analysis import style
from hypersparse.analysis.panels import legend_below, mark_epochs, method_panels, no_data_panel
from hypersparse.analysis.pick import (
    NothingToPlotError,
    art_epochs,
    art_runs,
    finished_runs,
    methods_list,
    opt_float,
    opt_int,
    pick_run,
    run_title,
    same_setting,
)
from hypersparse.analysis.runs import load_art_trace_csv, load_art_trace_npz


def _epoch_picks(n: int, k: int) -> list[int]:
    """Indices of first, last and evenly spaced epochs in between (at most k, distinct)."""
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


def hs_gradient(
    runs_root: Path,
    out_base: Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    kappa: float | None = None,
    seed: int | None = None,
    method: str | None = None,
    methods: str | Iterable[str] | None = None,
    n_epochs: int = 5,
    rank_min: float = 0.65,
) -> list[Path]:
    """|dL_HS/dw| and sorted |w| vs relative rank for several ART epochs of one run (of
    ``method``, else the first of ``methods``, else art_hs)."""
    df = finished_runs(runs_root)
    method = method or (methods_list(methods) or ["art_hs"])[0]
    r = pick_run(
        df,
        figure="hs_gradient",
        methods=[method],
        need_file="art_trace.npz",
        dataset=dataset,
        model=model,
        kappa=opt_float(kappa),
        seed=opt_int(seed),
    )
    z = load_art_trace_npz(Path(r["run_dir"]))
    epochs, q = z["epochs"], z["quantiles"]
    grad, mag = z["grad_at_quantile"], z["magnitude_at_quantile"]
    if len(epochs) == 0:
        raise NothingToPlotError(f"{r['run_dir']}/art_trace.npz has no ART epochs")
    k = float(z["kappa"]) if "kappa" in z else float(r["kappa"])
    sel = int(z["selected_epoch"]) if "selected_epoch" in z else None
    keep = q >= rank_min
    picks = _epoch_picks(len(epochs), n_epochs)
    cmap = plt.get_cmap("viridis")
    with plt.rc_context(style.RC):
        fig, axes = plt.subplots(
            1, 2, figsize=(2 * style.PANEL_WIDTH_IN, 2.5), layout="constrained"
        )
        handles, labels = [], []
        for j, i in enumerate(picks):
            c = cmap(0.9 * j / max(1, len(picks) - 1))
            (h,) = axes[0].plot(q[keep], grad[i, keep], color=c)
            pos = mag[i, keep] > 0
            axes[1].plot(q[keep][pos], mag[i, keep][pos], color=c)
            handles.append(h)
            labels.append(f"epoch {int(epochs[i])}" + (" (selected)" if sel == epochs[i] else ""))
        vl = None
        for ax in axes:
            vl = ax.axvline(k, color="0.3", ls="--", lw=1.0)
            ax.set_xlim(rank_min, 1.0)
            ax.set_xlabel("relative rank of |w| (ascending, rank / N)")
        handles.append(vl)
        labels.append(f"pruning rate κ = {style.kappa_percent(k)}")
        axes[0].set_ylabel(r"$|\partial L_{HS} / \partial w|$ (unscaled by α)")
        axes[0].set_title("(a) HyperSparse gradient magnitude")
        axes[1].set_yscale("log")
        axes[1].set_ylabel("|w| (log scale)")
        axes[1].set_title("(b) sorted weight magnitudes")
        fig.suptitle(run_title(r))
        legend_below(fig, handles, labels, ncol=min(4, len(labels)))
        return style.save_figure(fig, out_base)


def exploration(
    runs_root: Path,
    out_base: Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    kappa: float | None = None,
    seed: int | None = None,
    methods: str | Iterable[str] | None = None,
) -> list[Path]:
    """Per ART epoch: weights entering/leaving the top set, IoU with the final mask, alpha."""
    df = finished_runs(runs_root)
    methods_l = methods_list(methods) or list(style.ART_METHODS)
    ref, found = art_runs(df, "exploration", methods_l, dataset, model, opt_float(kappa), opt_int(seed))
    traces = {
        m: (load_art_trace_csv(Path(r["run_dir"])) if r is not None else None)
        for m, r in found.items()
    }
    alphas = np.concatenate([t["alpha"].to_numpy(float) for t in traces.values() if t is not None])
    alphas = alphas[alphas > 0]
    # the top set has a fixed size, so as many weights leave it as enter it: one series
    swaps = np.concatenate([t["entered"].to_numpy(float) for t in traces.values()
                            if t is not None])
    swaps = swaps[np.isfinite(swaps) & (swaps >= 0)]
    n = len(methods_l)
    with plt.rc_context(style.RC):
        fig, axes = method_panels(n, 2, col_width=2.4, height=3.8, sharex=True, sharey="row")
        twins = []
        for j, m in enumerate(methods_l):
            a0, a1 = axes[0, j], axes[1, j]
            a0.set_title(style.method_label(m))
            t = traces[m]
            if t is None:
                no_data_panel(a0, "not run")
                no_data_panel(a1, "not run")
                continue
            c = style.method_color(m)
            ok = t["entered"] >= 0  # -1: the first ART epoch has no previous top set
            a0.plot(t["epoch"][ok], t["entered"][ok], color=c, marker="o", ms=2.5)
            a1.plot(t["epoch"], t["iou_final"], color=c, marker="o", ms=2.5)
            tw = a1.twinx()
            tw.plot(t["epoch"], t["alpha"], color="0.45", ls="-.", lw=1.0)
            tw.set_yscale("log")
            if len(alphas):
                tw.set_ylim(alphas.min() / 1.3, alphas.max() * 1.3)
            tw.grid(False)
            tw.spines["right"].set_visible(True)
            twins.append((j, tw))
            sel, term = art_epochs(Path(found[m]["run_dir"]))
            if term is None and len(t):
                term = int(t["epoch"].iloc[-1])
            for ax in (a0, a1):
                mark_epochs(ax, sel, term)
                ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        for j, tw in twins:  # every alpha axis has its numbers; the label once, at the right
            if j == twins[-1][0]:
                tw.set_ylabel("α (log scale)")
        positive = swaps[swaps > 0]
        if positive.size and not (swaps == 0).any():
            axes[0, 0].set_yscale("log")
            axes[0, 0].set_ylim(positive.min() / 1.5, positive.max() * 1.5)
            axes[0, 0].set_ylabel("weights swapped into\n(= out of) the top set (log)")
        else:  # zeros on a log axis would vanish: a linear axis from 0
            axes[0, 0].set_ylim(0, max(float(swaps.max()) if swaps.size else 1.0, 1.0) * 1.1)
            axes[0, 0].set_ylabel("weights swapped into\n(= out of) the top set")
        axes[1, 0].set_ylabel("IoU of top set\nwith final mask")
        axes[1, 0].set_ylim(0, 1.05)
        for ax in axes[1]:
            ax.set_xlabel("epoch")
        fig.suptitle(run_title(ref, method=False))
        h = [
            plt.Line2D([], [], color="0.3", marker="o", ms=2.5),
            plt.Line2D([], [], color="0.45", ls="-."),
            plt.Line2D([], [], color="0.2", ls=":"),
            plt.Line2D([], [], color="0.2", ls="-", alpha=0.7),
        ]
        lab = [
            "per epoch (top row: swaps; bottom: IoU)",
            "α (right axis)",
            "selected epoch",
            "termination epoch",
        ]
        legend_below(fig, h, lab, ncol=2)
        return style.save_figure(fig, out_base)


def _window_half(run_dir: Path) -> int:
    """ART's window half-width b of a run (its spec; 1, the default, if unreadable)."""
    try:
        spec = json.loads((run_dir / "spec.json").read_text())
        return int(spec.get("params", {}).get("window_half", 1))
    except (OSError, ValueError, TypeError):
        return 1


def window_centres(epochs: np.ndarray, b: int) -> np.ndarray:
    """The epoch each window mean belongs to: the window's middle entry (the one ART selects),
    i.e. index min(len - 1, b) of the last 2b+1 epochs (fewer at the start)."""
    out = np.empty_like(epochs)
    for i in range(len(epochs)):
        start = max(0, i - 2 * b)
        out[i] = epochs[start + min(i - start, b)]
    return out


def art_termination(
    runs_root: Path,
    out_base: Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    kappa: float | None = None,
    seed: int | None = None,
    methods: str | Iterable[str] | None = None,
) -> list[Path]:
    """Pruned-copy vs dense training accuracy per ART epoch, with the termination epoch."""
    df = finished_runs(runs_root)
    methods_l = methods_list(methods) or list(style.ART_METHODS)
    ref, found = art_runs(df, "art_termination", methods_l, dataset, model, opt_float(kappa), opt_int(seed))
    present = [m for m in methods_l if found[m] is not None]
    n = len(present)
    with plt.rc_context(style.RC):
        fig, axes = method_panels(n, 1, col_width=2.6, height=2.5, sharey=True)
        for j, m in enumerate(present):
            ax = axes[0, j]
            t = load_art_trace_csv(Path(found[m]["run_dir"]))
            c = style.method_color(m)
            ax.plot(t["epoch"], t["pruned_train_acc"], color=c, marker="o", ms=3, ls="none")
            b = _window_half(Path(found[m]["run_dir"]))
            ax.plot(window_centres(t["epoch"].to_numpy(int), b), t["window_mean"], color=c,
                    lw=1.3)
            ax.plot(t["epoch"], t["dense_train_acc"], color="0.1", ls="--", lw=1.1)
            sel, term = art_epochs(Path(found[m]["run_dir"]))
            if term is None and len(t):
                term = int(t["epoch"].iloc[-1])
            mark_epochs(ax, sel, term)
            ax.set_title(style.method_label(m))
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        axes[0, 0].set_ylabel("training accuracy (%)")
        fig.suptitle(run_title(ref, method=False))
        h = [
            plt.Line2D([], [], color="0.3", marker="o", ms=3, ls="none"),
            plt.Line2D([], [], color="0.3"),
            plt.Line2D([], [], color="0.1", ls="--"),
            plt.Line2D([], [], color="0.2", ls=":"),
            plt.Line2D([], [], color="0.2", alpha=0.7),
        ]
        lab = [
            f"pruned copy (κ = {style.kappa_percent(ref['kappa'])})",
            "window mean (pruned), at the window's middle epoch",
            "dense (running, train mode)",
            "selected epoch",
            "termination epoch",
        ]
        legend_below(fig, h, lab, ncol=3)
        return style.save_figure(fig, out_base)


_MAG_STAGES = (  # (npz key, legend label, colour, line width): wide lines first
    ("magnitudes_before", "before ART (warm-up weights)", "#bdbdbd", 2.6),
    ("magnitudes_termination", "at the selected ART epoch", "#e6550d", 1.5),
    ("magnitudes_final", "after fine-tuning (zeros not shown)", "#3182bd", 1.0),
)


def _top_series(z: Any, key: str, kappa: float) -> tuple[np.ndarray, np.ndarray]:
    """(relative rank, sorted |w|) of the kept top (1 - kappa) weights for one stage: the
    dense top-set samples where the trace has them, else the uniform samples above kappa."""
    top_key = key.replace("magnitudes_", "magnitudes_top_")
    if top_key in z and "top_quantiles" in z and np.all(np.isfinite(z[top_key])):
        return np.asarray(z["top_quantiles"]), np.asarray(z[top_key])
    q, v = np.asarray(z["mag_quantiles"]), np.asarray(z[key])
    keep = q >= kappa
    return q[keep], v[keep]


def magnitudes(
    runs_root: Path,
    out_base: Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    kappa: float | None = None,
    seed: int | None = None,
    methods: str | Iterable[str] | None = None,
) -> list[Path]:
    """Sorted |w| of the prunable weights before ART, at the selected epoch and after
    fine-tuning: all weights (log scale, top row) and the kept top (1 - kappa) (bottom row)."""
    df = finished_runs(runs_root)
    methods_l = methods_list(methods) or list(style.ART_METHODS)
    ref = pick_run(
        df,
        figure="magnitudes",
        methods=methods_l,
        need_file="art_trace.npz",
        dataset=dataset,
        model=model,
        kappa=opt_float(kappa),
        seed=opt_int(seed),
    )
    found = {mm: same_setting(df, ref, mm, "art_trace.npz", opt_int(seed)) for mm in methods_l}
    present = [mm for mm in methods_l if found[mm] is not None]
    n = len(present)
    with plt.rc_context(style.RC):
        fig, axes = method_panels(n, 2, col_width=2.6, height=4.6, sharey="row")
        for j, mm in enumerate(present):
            top_ax, low_ax = axes[0, j], axes[1, j]
            z = dict(load_art_trace_npz(Path(found[mm]["run_dir"])))
            kap = float(z["kappa"]) if "kappa" in z else float(ref["kappa"])
            q = z["mag_quantiles"]
            for key, _, c, lw in _MAG_STAGES:
                if key not in z:
                    continue
                v = z[key]
                pos = v > 0
                top_ax.plot(q[pos], v[pos], color=c, lw=lw)
                tq, tv = _top_series(z, key, kap)
                ok = np.isfinite(tv)
                low_ax.plot(tq[ok], tv[ok], color=c, lw=lw)
            top_ax.axvline(kap, color="0.3", ls="--", lw=1.0)
            top_ax.axvspan(kap, 1.0, color="0.9", lw=0, zorder=0)
            top_ax.set_yscale("log")
            top_ax.set_xlim(0, 1)
            top_ax.set_title(style.method_label(mm))
            top_ax.set_xlabel("relative rank of |w| (ascending)")
            low_ax.set_xlim(kap, 1.0)
            low_ax.set_ylim(bottom=0)
            low_ax.set_xlabel("relative rank, kept weights only")
        axes[0, 0].set_ylabel("|w|, all weights (log)")
        axes[1, 0].set_ylabel(f"|w|, top {style.kappa_percent(1 - float(ref['kappa']))}")
        fig.suptitle(run_title(ref, method=False))
        h = [plt.Line2D([], [], color=c, lw=lw) for _, _, c, lw in _MAG_STAGES]
        h.append(plt.Line2D([], [], color="0.3", ls="--"))
        h.append(mpatches.Patch(color="0.9"))
        lab = [lbl for _, lbl, _, _ in _MAG_STAGES] + [
            f"κ = {style.kappa_percent(ref['kappa'])}",
            "kept weights (zoomed in the bottom row)",
        ]
        legend_below(fig, h, lab, ncol=3)
        return style.save_figure(fig, out_base)
