"""Figures from run folders only: each writes out_base.pdf (vector) and out_base.png.

Every figure function has the signature ``f(runs_root, out_base, **opts) -> list[Path]`` and
is registered in FIGURES. Partial data (missing methods or seeds) is drawn as far as it goes;
a figure raises NothingToPlotError, naming the run it needs, only when nothing can be drawn.
Captions live in workflow/report/figure.rst (one section per figure).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib import patches as mpatches
from matplotlib import ticker

from hypersparse.analysis import style
from hypersparse.analysis.runs import (
    collect_runs,
    load_art_trace_csv,
    load_art_trace_npz,
    load_metrics,
    load_prunable_weights,
    load_state,
    select_runs,
)
from hypersparse.analysis.tables import aggregate

from ..errors import UserError


class NothingToPlotError(UserError, ValueError):
    """Raised when the run folders hold nothing a figure can draw (the message says what)."""


# ----------------------------------------------------------------------------- selection


def _runs(runs_root: Path) -> pd.DataFrame:
    df = collect_runs(runs_root)
    if df.empty:
        raise NothingToPlotError(f"no finished runs (metrics.json) under {runs_root}")
    return df


def _methods_opt(methods: str | Iterable[str] | None) -> list[str] | None:
    """Accept a list or a comma-separated string (as a CLI passes it)."""
    if methods is None:
        return None
    if isinstance(methods, str):
        return [m.strip() for m in methods.split(",") if m.strip()]
    return list(methods)


def _pick_pair(df: pd.DataFrame, dataset: str | None, model: str | None) -> tuple[str, str]:
    """The (dataset, model) to plot: as given, or the only one present."""
    ok = select_runs(df, dataset=dataset, model=model)
    pairs = sorted({(str(d), str(m)) for d, m in ok[["dataset", "model"]].itertuples(index=False)})
    if not pairs:
        raise NothingToPlotError(
            f"no successful runs for dataset={dataset!r}, model={model!r}; present: "
            f"{sorted({(d, m) for d, m in df[['dataset', 'model']].itertuples(index=False)})}"
        )
    if len(pairs) > 1:
        raise ValueError(
            f"several (dataset, model) pairs present, pass dataset= and model=: {pairs}"
        )
    return pairs[0]


def _middle(values: Iterable[float]) -> float:
    """The middle value of the sorted distinct values (upper middle for an even count)."""
    vals = sorted(set(float(v) for v in values))
    return vals[len(vals) // 2]


def _describe(**kw: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in kw.items() if v is not None) or "any"


def _with_file(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows whose run folder holds the file ``name``."""
    has = np.array([(Path(d) / name).is_file() for d in df["run_dir"]], dtype=bool)
    return df.loc[has] if len(df) else df


def _pick_run(
    df: pd.DataFrame,
    *,
    figure: str,
    methods: list[str],
    need_file: str,
    dataset: str | None,
    model: str | None,
    kappa: float | None,
    seed: int | None,
) -> pd.Series:
    """One successful run of one of ``methods`` holding ``need_file`` (middle kappa, low seed)."""
    cand = select_runs(df, dataset=dataset, model=model, kappa=kappa, seed=seed)
    cand = cand[cand["method"].isin(methods)]
    cand = _with_file(cand, need_file)
    cand = cand[cand["kappa"] > 0]
    if cand.empty:
        raise NothingToPlotError(
            f"figure {figure!r} needs a finished run of method {' or '.join(methods)} with "
            f"{need_file} ({_describe(dataset=dataset, model=model, kappa=kappa, seed=seed)}); "
            f"none found. Train e.g. results/runs/<dataset>/<model>/{methods[0]}/k0.98/seed0."
        )
    if dataset is None or model is None:
        d, m = _pick_pair(cand, dataset, model)
        cand = cand[(cand["dataset"] == d) & (cand["model"] == m)]
    k = _middle(cand["kappa"]) if kappa is None else kappa
    cand = select_runs(cand, kappa=k)
    order = {m: i for i, m in enumerate(methods)}
    cand = cand.assign(_o=cand["method"].map(order)).sort_values(["_o", "seed"])
    return cand.iloc[0]


def _same_setting(
    df: pd.DataFrame, ref: pd.Series, method: str, need_file: str, seed: int | None
) -> pd.Series | None:
    """The run of ``method`` with ref's dataset/model/kappa (given seed, else lowest seed)."""
    cand = select_runs(
        df,
        dataset=ref["dataset"],
        model=ref["model"],
        method=method,
        kappa=ref["kappa"],
        seed=seed,
    )
    cand = _with_file(cand, need_file)
    if cand.empty:
        return None
    return cand.sort_values("seed").iloc[0]


def _run_title(r: pd.Series, *, method: bool = True) -> str:
    parts = [style.method_label(r["method"])] if method else []
    parts += [
        f"{r['dataset']} / {r['model']}",
        f"κ = {style.kappa_percent(r['kappa'])}",
        f"seed {int(r['seed'])}",
    ]
    return ", ".join(parts)


def _art_epochs(run_dir: Path) -> tuple[int | None, int | None]:
    """(selected_epoch, terminated_epoch) from metrics.json's art block, if present."""
    try:
        art = load_metrics(run_dir).get("art") or {}
    except (OSError, ValueError):
        art = {}
    sel, term = art.get("selected_epoch"), art.get("terminated_epoch")
    return (None if sel is None else int(sel)), (None if term is None else int(term))


def _no_data_panel(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.grid(False)


def _legend_below(fig: plt.Figure, handles: list, labels: list, ncol: int) -> None:
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


# ----------------------------------------------------------------------------- figure 1


_NEVER = "0.85"  # heat-map cells with nothing in them: a disconnected layer, a dead position
DODGE = 0.012  # sideways shift between methods in acc_vs_sparsity (decades of log x)
_RINGS = {  # marks on points, as the tables' footnote marks
    "sparsity_ok_all": {"label": "missed target sparsity (†)",
                        "style": dict(marker="o", ms=9, mfc="none", mec="red", mew=1.0)},
    "disconnected": {"label": "a layer lost every weight (§)",
                     "style": dict(marker="s", ms=9, mfc="none", mec="0.2", mew=0.8)},
    "art_collapsed": {"label": "ART's dense model collapsed (¶)",
                      "style": dict(marker="D", ms=9, mfc="none", mec="#7b3294", mew=0.8)},
}


def acc_vs_sparsity(
    runs_root: Path,
    out_base: Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    metric: str = "final_test_acc",
    methods: str | Iterable[str] | None = None,
) -> list[Path]:
    """Test accuracy (mean ± std over seeds) vs sparsity for every method; dense as a line."""
    df = _runs(runs_root)
    dataset, model = _pick_pair(df, dataset, model)
    agg = aggregate(select_runs(df, dataset=dataset, model=model, status=None))
    agg = agg[agg["n_seeds"] > 0]
    wanted = _methods_opt(methods)
    if wanted is not None:
        agg = agg[agg["method"].isin(wanted + ["dense"])]
    emergent = agg[agg["emergent"].fillna(False).astype(bool)] if "emergent" in agg else agg[:0]
    sparse = agg[(agg["kappa"] > 0) & ~agg.index.isin(emergent.index)]
    dense = agg[(agg["method"] == "dense") & (agg["kappa"] == 0)]
    if sparse.empty and dense.empty and emergent.empty:
        raise NothingToPlotError(f"no successful runs to plot for {dataset}/{model}")
    ylabel = {
        "final_test_acc": "final-epoch test accuracy (%)",
        "best_test_acc": "best-epoch test accuracy (%)\n(selected on the test set)",
    }
    with plt.rc_context(style.RC):
        fig, ax = plt.subplots(figsize=(style.PANEL_WIDTH_IN, 2.6), layout="constrained")
        ax.set_xscale("log")
        ax.set_xlim(1.0, 0.005)
        handles, labels = [], []
        if not dense.empty:
            r = dense.iloc[0]
            mu, sd = r[f"{metric}_mean"], r[f"{metric}_std"]
            h = ax.axhline(mu, color=style.method_color("dense"), ls="--", lw=1.0)
            if not math.isnan(sd):
                ax.axhspan(mu - sd, mu + sd, color=style.method_color("dense"), alpha=0.08, lw=0)
            handles.append(h)
            labels.append(f"{style.method_label('dense')} (0%)")
        order = style.sort_methods(sparse["method"])
        marks_used: set[str] = set()
        for i, m in enumerate(order):
            g = sparse[sparse["method"] == m].sort_values("kappa")
            # dodge: each method a little to the side (log x), so no marker hides another
            x = (1.0 - g["kappa"].to_numpy(float)) * 10 ** (DODGE * (i - (len(order) - 1) / 2))
            y = g[f"{metric}_mean"].to_numpy(float)
            sd = np.nan_to_num(g[f"{metric}_std"].to_numpy(float), nan=0.0)
            c = style.method_color(m)
            (h,) = ax.plot(x, y, color=c, marker=style.method_marker(m), label=m, mfc="white",
                           mew=1.2, ms=5)
            ax.fill_between(x, y - sd, y + sd, color=c, alpha=0.18, lw=0)
            for key, ring in _RINGS.items():
                hit = g[key].fillna(False).to_numpy(bool) if key in g else np.zeros(len(g), bool)
                if key == "sparsity_ok_all":
                    hit = g[key].fillna(True).to_numpy(bool) == False  # noqa: E712
                if hit.any():
                    ax.plot(x[hit], y[hit], ls="none", **ring["style"])
                    marks_used.add(key)
            handles.append(h)
            labels.append(style.method_label(m))
        for _, r in emergent.iterrows():  # xRDA: one point at the sparsity it reached
            x0 = max(1.0 - float(r["sparsity_mean"]), 1e-4)
            h = ax.errorbar([x0], [r[f"{metric}_mean"]], yerr=[np.nan_to_num(r[f"{metric}_std"])],
                            color=style.method_color(r["method"]),
                            marker=style.method_marker(r["method"]), ms=6, ls="none")
            handles.append(h)
            labels.append(f"{style.method_label(r['method'])} (emergent sparsity)")
        kappas = sorted(set(float(k) for k in sparse["kappa"]))
        reached = [float(v) for v in emergent["sparsity_mean"]] if len(emergent) else []
        if kappas or reached:
            ticks = kappas or reached
            ax.set_xticks([1 - k for k in ticks])
            ax.set_xticklabels([style.kappa_percent(k) for k in ticks])
            span = [1 - k for k in kappas + reached]
            lo, hi = min(span), max(span)
            ax.set_xlim(hi * 1.6, lo / 1.6)  # inverted: sparsity grows to the right
        else:  # dense only: an empty sparsity axis over the default range
            ax.set_xticks([])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_xlabel("sparsity κ (log scale of the remaining fraction 1 − κ)")
        ax.set_ylabel(ylabel.get(metric, metric))
        ax.set_title(f"{dataset} / {model}")
        for key in _RINGS:
            if key in marks_used:
                handles.append(plt.Line2D([], [], ls="none", **_RINGS[key]["style"]))
                labels.append(_RINGS[key]["label"])
        _legend_below(fig, handles, labels, ncol=3)
        fig.text(0.01, 0.005, "points of different methods are shifted slightly sideways so "
                 "that none hides another", fontsize=5.5, color="0.4")
        return style.save_figure(fig, out_base)


def acc_vs_flops(
    runs_root: Path,
    out_base: Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    metric: str = "final_test_acc",
    methods: str | Iterable[str] | None = None,
) -> list[Path]:
    """Test accuracy vs training FLOPs of the whole run (x dense training), every method."""
    df = _runs(runs_root)
    dataset, model = _pick_pair(df, dataset, model)
    agg = aggregate(select_runs(df, dataset=dataset, model=model, status=None))
    agg = agg[(agg["n_seeds"] > 0) & agg["train_flops_ratio_mean"].notna()]
    wanted = _methods_opt(methods)
    if wanted is not None:
        agg = agg[agg["method"].isin(wanted + ["dense"])]
    if agg.empty:
        raise NothingToPlotError(f"no runs with FLOPs counts for {dataset}/{model} (runs "
                                 "trained before FLOPs were recorded have none)")
    with plt.rc_context(style.RC):
        fig, ax = plt.subplots(figsize=(style.PANEL_WIDTH_IN, 2.6), layout="constrained")
        ax.set_xscale("log")
        handles, labels = [], []
        for m in style.sort_methods(agg["method"]):
            g = agg[agg["method"] == m].sort_values("kappa")
            x = g["train_flops_ratio_mean"].to_numpy(float)
            y = g[f"{metric}_mean"].to_numpy(float)
            c = style.method_color(m)
            (h,) = ax.plot(x, y, color=c, marker=style.method_marker(m), mfc="white", mew=1.2,
                           ms=5, ls="-" if len(g) > 1 else "none")
            side = 1 if len(handles) % 2 == 0 else -1  # alternate sides: fewer overlapping labels
            for xi, yi, k in zip(x, y, g["kappa"], strict=True):
                if k > 0 and np.isfinite(yi):
                    ax.annotate(style.kappa_percent(k), (xi, yi), textcoords="offset points",
                                xytext=(4 * side, 3), fontsize=5, color=c,
                                ha="left" if side > 0 else "right")
            handles.append(h)
            labels.append(style.method_label(m))
        ax.axvline(1.0, color="0.5", lw=0.8, ls=":")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xlabel("training FLOPs of the whole run\n(multiple of one dense training, log scale)")
        ax.set_ylabel("final-epoch test accuracy (%)" if metric == "final_test_acc" else metric)
        ax.set_title(f"{dataset} / {model}: accuracy vs training cost (labels: κ)")
        _legend_below(fig, handles, labels, ncol=3)
        return style.save_figure(fig, out_base)


# ----------------------------------------------------------------------------- figure 2


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
    df = _runs(runs_root)
    method = method or (_methods_opt(methods) or ["art_hs"])[0]
    r = _pick_run(
        df,
        figure="hs_gradient",
        methods=[method],
        need_file="art_trace.npz",
        dataset=dataset,
        model=model,
        kappa=_f(kappa),
        seed=_i(seed),
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
        fig.suptitle(_run_title(r))
        _legend_below(fig, handles, labels, ncol=min(4, len(labels)))
        return style.save_figure(fig, out_base)


# ----------------------------------------------------------------------------- figures 3, 4


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def _i(x: Any) -> int | None:
    return None if x is None else int(x)


def _art_runs(
    df: pd.DataFrame,
    figure: str,
    methods: list[str],
    dataset: str | None,
    model: str | None,
    kappa: float | None,
    seed: int | None,
) -> tuple[pd.Series, dict[str, pd.Series | None]]:
    """A reference ART run and, per method, its run in the same setting (None: not run)."""
    ref = _pick_run(
        df,
        figure=figure,
        methods=methods,
        need_file="art_trace.csv",
        dataset=dataset,
        model=model,
        kappa=kappa,
        seed=seed,
    )
    found = {m: _same_setting(df, ref, m, "art_trace.csv", seed) for m in methods}
    return ref, found


def _mark_epochs(ax: plt.Axes, sel: int | None, term: int | None) -> None:
    if term is not None:
        ax.axvline(term, color="0.2", ls="-", lw=0.9, alpha=0.7)
    if sel is not None:
        ax.axvline(sel, color="0.2", ls=":", lw=1.1)


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
    df = _runs(runs_root)
    methods_l = _methods_opt(methods) or list(style.ART_METHODS)
    ref, found = _art_runs(df, "exploration", methods_l, dataset, model, _f(kappa), _i(seed))
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
        fig, axes = plt.subplots(
            2,
            n,
            figsize=(max(2.4 * n, style.PANEL_WIDTH_IN), 3.8),
            sharex=True,
            sharey="row",
            layout="constrained",
            squeeze=False,
        )
        twins = []
        for j, m in enumerate(methods_l):
            a0, a1 = axes[0, j], axes[1, j]
            a0.set_title(style.method_label(m))
            t = traces[m]
            if t is None:
                _no_data_panel(a0, "not run")
                _no_data_panel(a1, "not run")
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
            sel, term = _art_epochs(Path(found[m]["run_dir"]))
            if term is None and len(t):
                term = int(t["epoch"].iloc[-1])
            for ax in (a0, a1):
                _mark_epochs(ax, sel, term)
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
        fig.suptitle(_run_title(ref, method=False))
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
        _legend_below(fig, h, lab, ncol=2)
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
    df = _runs(runs_root)
    methods_l = _methods_opt(methods) or list(style.ART_METHODS)
    ref, found = _art_runs(df, "art_termination", methods_l, dataset, model, _f(kappa), _i(seed))
    present = [m for m in methods_l if found[m] is not None]
    n = len(present)
    with plt.rc_context(style.RC):
        fig, axes = plt.subplots(
            1,
            n,
            figsize=(max(2.6 * n, style.PANEL_WIDTH_IN), 2.5),
            sharey=True,
            layout="constrained",
            squeeze=False,
        )
        for j, m in enumerate(present):
            ax = axes[0, j]
            t = load_art_trace_csv(Path(found[m]["run_dir"]))
            c = style.method_color(m)
            ax.plot(t["epoch"], t["pruned_train_acc"], color=c, marker="o", ms=3, ls="none")
            b = _window_half(Path(found[m]["run_dir"]))
            ax.plot(window_centres(t["epoch"].to_numpy(int), b), t["window_mean"], color=c,
                    lw=1.3)
            ax.plot(t["epoch"], t["dense_train_acc"], color="0.1", ls="--", lw=1.1)
            sel, term = _art_epochs(Path(found[m]["run_dir"]))
            if term is None and len(t):
                term = int(t["epoch"].iloc[-1])
            _mark_epochs(ax, sel, term)
            ax.set_title(style.method_label(m))
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        axes[0, 0].set_ylabel("training accuracy (%)")
        fig.suptitle(_run_title(ref, method=False))
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
        _legend_below(fig, h, lab, ncol=3)
        return style.save_figure(fig, out_base)


# ----------------------------------------------------------------------------- figures 5, 6


def _sparse_runs_at(
    df: pd.DataFrame,
    figure: str,
    dataset: str | None,
    model: str | None,
    kappa: float | None,
    seed: int | None,
    methods: list[str] | None,
    need_file: str | None,
) -> tuple[pd.DataFrame, float, str, str, str]:
    """Successful non-dense runs at one kappa, one per method (given seed, else its lowest).

    Returns (runs in method order, kappa, dataset, model, a seed label for titles).
    """
    cand = select_runs(df, dataset=dataset, model=model, seed=seed)
    cand = cand[cand["kappa"] > 0]
    if methods is not None:
        cand = cand[cand["method"].isin(methods)]
    if need_file is not None:
        cand = _with_file(cand, need_file)
    if cand.empty:
        raise NothingToPlotError(
            f"figure {figure!r} needs finished sparse runs (kappa > 0"
            f"{', with ' + need_file if need_file else ''}) "
            f"({_describe(dataset=dataset, model=model, kappa=kappa, seed=seed)}); none found"
        )
    d, m = (dataset, model) if dataset and model else _pick_pair(cand, dataset, model)
    cand = cand[(cand["dataset"] == d) & (cand["model"] == m)]
    k = _middle(cand["kappa"]) if kappa is None else kappa
    cand = select_runs(cand, kappa=k)
    if cand.empty:
        raise NothingToPlotError(
            f"figure {figure!r} needs finished sparse runs at kappa={k} for {d}/{m}; none found"
        )
    order = {mm: i for i, mm in enumerate(style.sort_methods(cand["method"]))}
    cand = cand.assign(_o=cand["method"].map(order)).sort_values(["_o", "seed"])
    cand = cand.drop(columns="_o").drop_duplicates("method")
    seeds = sorted(set(int(x) for x in cand["seed"]))
    label = f"seed {seeds[0]}" if len(seeds) == 1 else "lowest seed per method"
    return cand, k, d, m, label


def _layer_info(run_dir: Path) -> tuple[dict[str, float], dict[str, int], list[str] | None]:
    """(layer density, layer size, network order of layers or None) of one run."""
    met = load_metrics(run_dir)
    dens, size = met.get("layer_density"), met.get("layer_size")
    order = None
    pt = run_dir / "model.pt"
    if pt.is_file():
        from hypersparse.masks import sparsity_report

        rep = sparsity_report(load_state(run_dir))
        order = list(rep["layer_density"])
        if not dens:
            dens, size = rep["layer_density"], rep["layer_size"]
    if not dens:
        raise NothingToPlotError(
            f"{run_dir} has neither layer_density in metrics.json nor model.pt"
        )
    return dict(dens), dict(size or {}), order


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _pct_text(d: float) -> str:
    if d == 0:
        return "0"
    p = 100 * d
    return f"{p:.0f}" if p >= 9.5 else f"{p:.1f}" if p >= 0.1 else "<0.1"


def layer_density(
    runs_root: Path,
    out_base: Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    kappa: float | None = None,
    seed: int | None = None,
    methods: str | Iterable[str] | None = None,
) -> list[Path]:
    """Heat map of final-mask density per layer (rows) and method (columns) at one kappa."""
    df = _runs(runs_root)
    runs, k, d, m, seed_label = _sparse_runs_at(
        df, "layer_density", dataset, model, _f(kappa), _i(seed), _methods_opt(methods), None
    )
    cols, sizes, order = {}, {}, None
    for _, r in runs.iterrows():
        dens, size, o = _layer_info(Path(r["run_dir"]))
        cols[r["method"]] = dens
        sizes.update(size)
        order = order or o
    layers = order or sorted({k for c in cols.values() for k in c}, key=_natural_key)
    layers = [layer for layer in layers if any(layer in c for c in cols.values())]
    mat = pd.DataFrame(
        {meth: [c.get(layer, np.nan) for layer in layers] for meth, c in cols.items()}
    )
    ylabels = [
        lay.removesuffix(".weight") + (f" ({_short(sizes[lay])})" if lay in sizes else "")
        for lay in layers
    ]
    vals = mat.to_numpy(float)
    pos = vals[np.isfinite(vals) & (vals > 0)]
    vmin = max(float(pos.min()) if pos.size else 1e-3, 1e-4)
    annot = np.vectorize(lambda v: "" if not np.isfinite(v) else _pct_text(v))(vals)
    with plt.rc_context(style.RC):
        w = max(style.PANEL_WIDTH_IN, 1.6 + 0.5 * len(cols))
        h = 1.2 + 0.17 * len(layers)
        fig, ax = plt.subplots(figsize=(w, h), layout="constrained")
        ax.set_facecolor(_NEVER)  # zero-density (disconnected) cells show as grey
        sns.heatmap(
            np.where(vals > 0, vals, np.nan),
            ax=ax,
            cmap="viridis",
            norm=mcolors.LogNorm(vmin=vmin, vmax=1.0),
            annot=annot,
            fmt="",
            annot_kws={"fontsize": 7},
            linewidths=0.3,
            linecolor="white",
            cbar_kws={
                "label": "weights kept in the layer (log scale)",
                "shrink": 0.8,
            },
            xticklabels=[style.method_label(c) for c in cols],
            yticklabels=ylabels,
        )
        cbar = ax.collections[0].colorbar
        cbar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{100 * v:g}%"))
        cbar.ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        for (r, c), v in np.ndenumerate(vals):
            if v == 0:  # masked out of the colour map above; still say "0"
                ax.text(c + 0.5, r + 0.5, "0", ha="center", va="center", fontsize=7)
        ax.grid(False)
        ax.tick_params(axis="x", rotation=45)
        for lab in ax.get_xticklabels():
            lab.set_ha("right")
        ax.set_xlabel("")
        ax.set_ylabel("prunable layer (number of weights)")
        ax.set_title(
            f"{d} / {m}, κ = {style.kappa_percent(k)}, {seed_label}\n"
            "cell text: % of the layer's weights kept"
        )
        if (vals == 0).any():
            fig.legend([plt.Rectangle((0, 0), 1, 1, fc=_NEVER, ec="0.6", lw=0.5)],
                       ["0: no weight left - the network is disconnected at that layer"],
                       loc="outside lower center", frameon=False, fontsize=6.5)
        return style.save_figure(fig, out_base)


_LAYER_STAGE = re.compile(r"^(?:module\.)?(layer\d+)\.")


def conv3x3_stages(weights: list[tuple[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Group 3x3 conv weights into stages: ResNet 'layerN' prefix (others -> 'stem'),
    else (VGG, unknown) by output-channel count. Order: first appearance."""
    convs = [(k, w) for k, w in weights if w.ndim == 4 and w.shape[-2:] == (3, 3)]
    by_prefix = any(_LAYER_STAGE.match(k) for k, _ in convs)
    stages: dict[str, list[np.ndarray]] = {}
    for k, w in convs:
        if by_prefix:
            mt = _LAYER_STAGE.match(k)
            name = mt.group(1) if mt else "stem"
        else:
            name = f"{w.shape[0]} ch"
        stages.setdefault(name, []).append(w)
    return stages


def kernel_stats(kernels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 survival frequency over all kernels, counts of kernels with 0..9 survivors)."""
    k = np.concatenate([w.reshape(-1, 3, 3) for w in kernels]) != 0
    freq = k.mean(axis=0)
    hist = np.bincount(k.reshape(len(k), 9).sum(axis=1), minlength=10)
    return freq, hist


def _annotated_grid(ax: plt.Axes, freq: np.ndarray, norm: mcolors.Normalize,
                    cmap: str = "magma") -> Any:
    """A small heat map on the figure's shared colour scale ``norm``, each cell's value in %
    written in it; a position that never survives is grey (as a disconnected layer is in
    layer_density), since the colour map itself starts near black."""
    cm = plt.get_cmap(cmap).with_extremes(bad=_NEVER)
    image = ax.imshow(np.ma.masked_less_equal(freq, 0), cmap=cm, norm=norm,
                      interpolation="nearest")
    for (r, c), v in np.ndenumerate(freq):
        rgb = mcolors.to_rgb(cm(norm(v)) if v > 0 else _NEVER)
        lum = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
        ax.text(
            c,
            r,
            _pct_text(float(v)),
            ha="center",
            va="center",
            fontsize=7,
            color="black" if lum > 0.5 else "white",
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for sp in ax.spines.values():
        sp.set_visible(False)
    return image


def kernel_patterns(
    runs_root: Path,
    out_base: Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    kappa: float | None = None,
    seed: int | None = None,
    methods: str | Iterable[str] | None = None,
) -> list[Path]:
    """Per method: how often each 3x3 kernel position survives (per stage) + survivors/kernel."""
    df = _runs(runs_root)
    runs, k, d, m, seed_label = _sparse_runs_at(
        df,
        "kernel_patterns",
        dataset,
        model,
        _f(kappa),
        _i(seed),
        _methods_opt(methods),
        "model.pt",
    )
    data = []
    for _, r in runs.iterrows():
        stages = conv3x3_stages(load_prunable_weights(Path(r["run_dir"])))
        if stages:
            data.append((r["method"], stages))
    if not data:
        raise NothingToPlotError(f"the {d}/{m} models have no 3x3 convolutions")
    stage_names = list(dict.fromkeys(s for _, st in data for s in st))
    ns, nm = len(stage_names), len(data)
    freqs = [kernel_stats(st[n])[0] for _, st in data for n in st]
    positive = np.concatenate([f[f > 0] for f in freqs]) if freqs else np.array([1.0])
    norm = mcolors.LogNorm(vmin=max(float(positive.min()) if positive.size else 1e-3, 1e-4),
                           vmax=max(float(positive.max()) if positive.size else 1.0, 1e-3))
    image = None
    with plt.rc_context(style.RC):
        fig, axes = plt.subplots(
            nm,
            ns + 1,
            figsize=(1.05 * ns + 2.0, 1.05 * nm + 0.9),
            layout="constrained",
            squeeze=False,
            gridspec_kw={"width_ratios": [1] * ns + [1.9]},
        )
        for i, (meth, stages) in enumerate(data):
            all_k = []
            for j, sname in enumerate(stage_names):
                ax = axes[i, j]
                if sname not in stages:
                    _no_data_panel(ax, "–")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    continue
                all_k += stages[sname]
                freq, _ = kernel_stats(stages[sname])
                image = _annotated_grid(ax, freq, norm)
                if i == 0:
                    n_kernels = sum(w.shape[0] * w.shape[1] for w in stages[sname])
                    ax.set_title(
                        f"{sname}\n({_short(n_kernels)} kernels)",
                        fontsize=7,
                    )
            axes[i, 0].set_ylabel(style.method_label(meth), rotation=0, ha="right", va="center")
            _, hist = kernel_stats(all_k)
            ax = axes[i, ns]
            frac = hist / hist.sum()
            ax.bar(
                np.arange(10),
                np.where(frac > 0, frac, np.nan),
                color=style.method_color(meth),
                width=0.8,
            )
            ax.set_yscale("log")
            ax.set_ylim(min(frac[frac > 0].min() / 2, 0.5), 1.5)
            ax.set_xticks(range(10))
            ax.set_xlim(-0.6, 9.6)
            ax.yaxis.set_major_locator(ticker.LogLocator(numticks=4))
            if i == 0:
                ax.set_title("surviving weights per kernel", fontsize=7)
            if i == nm - 1:
                ax.set_xlabel("survivors (of 9)")
            ax.set_ylabel("fraction of\nkernels (log)")
        if image is not None:
            bar = fig.colorbar(image, ax=axes[:, :ns].ravel().tolist(), shrink=0.6,
                               location="bottom", aspect=40, pad=0.02)
            bar.set_label("% of kernels keeping the position (all maps; grey 0: never)")
            bar.ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{100 * v:g}%"))
        fig.suptitle(
            f"{d} / {m}, κ = {style.kappa_percent(k)}, {seed_label}: % of 3×3 kernels in which "
            "each position survives"
        )
        return style.save_figure(fig, out_base)


# ----------------------------------------------------------------------------- figure 7


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
    df = _runs(runs_root)
    methods_l = _methods_opt(methods) or list(style.ART_METHODS)
    ref = _pick_run(
        df,
        figure="magnitudes",
        methods=methods_l,
        need_file="art_trace.npz",
        dataset=dataset,
        model=model,
        kappa=_f(kappa),
        seed=_i(seed),
    )
    found = {mm: _same_setting(df, ref, mm, "art_trace.npz", _i(seed)) for mm in methods_l}
    present = [mm for mm in methods_l if found[mm] is not None]
    n = len(present)
    with plt.rc_context(style.RC):
        fig, axes = plt.subplots(
            2,
            n,
            figsize=(max(2.6 * n, style.PANEL_WIDTH_IN), 4.6),
            sharey="row",
            layout="constrained",
            squeeze=False,
        )
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
        fig.suptitle(_run_title(ref, method=False))
        h = [plt.Line2D([], [], color=c, lw=lw) for _, _, c, lw in _MAG_STAGES]
        h.append(plt.Line2D([], [], color="0.3", ls="--"))
        h.append(mpatches.Patch(color="0.9"))
        lab = [lbl for _, lbl, _, _ in _MAG_STAGES] + [
            f"κ = {style.kappa_percent(ref['kappa'])}",
            "kept weights (zoomed in the bottom row)",
        ]
        _legend_below(fig, h, lab, ncol=3)
        return style.save_figure(fig, out_base)


# ----------------------------------------------------------------------------- registry

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
