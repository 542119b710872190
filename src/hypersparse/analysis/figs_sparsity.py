"""The comparison figures of every grid: accuracy vs sparsity and vs training FLOPs, where
the surviving weights sit per layer, and patterns inside 3x3 kernels (captions:
workflow/report/figure.rst)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib import ticker

from hypersparse.analysis import style
from hypersparse.analysis.panels import NEVER, legend_below, no_data_panel
from hypersparse.analysis.pick import (
    NothingToPlotError,
    finished_runs,
    methods_list,
    opt_float,
    opt_int,
    pick_pair,
    sparse_runs_at,
)
from hypersparse.analysis.runs import load_metrics, load_prunable_weights, load_state, select_runs
from hypersparse.analysis.tables import aggregate

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
    df = finished_runs(runs_root)
    dataset, model = pick_pair(df, dataset, model)
    agg = aggregate(select_runs(df, dataset=dataset, model=model, status=None))
    agg = agg[agg["n_seeds"] > 0]
    wanted = methods_list(methods)
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
        legend_below(fig, handles, labels, ncol=3)
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
    df = finished_runs(runs_root)
    dataset, model = pick_pair(df, dataset, model)
    agg = aggregate(select_runs(df, dataset=dataset, model=model, status=None))
    agg = agg[(agg["n_seeds"] > 0) & agg["train_flops_ratio_mean"].notna()]
    wanted = methods_list(methods)
    if wanted is not None:
        agg = agg[agg["method"].isin(wanted + ["dense"])]
    if agg.empty:
        raise NothingToPlotError(f"no runs with FLOPs counts for {dataset}/{model} (runs "
                                 "trained before FLOPs were recorded have none)")
    with plt.rc_context(style.RC):
        fig, ax = plt.subplots(figsize=(style.PANEL_WIDTH_IN, 2.6), layout="constrained")
        ax.set_xscale("log")
        handles, labels = [], []
        notes: list[tuple[float, float, float, str, int]] = []
        for m in style.sort_methods(agg["method"]):
            g = agg[agg["method"] == m].sort_values("kappa")
            x = g["train_flops_ratio_mean"].to_numpy(float)
            y = g[f"{metric}_mean"].to_numpy(float)
            c = style.method_color(m)
            (h,) = ax.plot(x, y, color=c, marker=style.method_marker(m), mfc="white", mew=1.2,
                           ms=5, ls="-" if len(g) > 1 else "none")
            side = 1 if len(handles) % 2 == 0 else -1  # alternate sides: fewer overlapping labels
            notes += [(xi, yi, k, c, side) for xi, yi, k in zip(x, y, g["kappa"], strict=True)
                      if k > 0 and np.isfinite(yi)]
            handles.append(h)
            labels.append(style.method_label(m))
        ax.autoscale_view()
        placed: list[np.ndarray] = []
        for xi, yi, k, c, side in notes:  # a label only where it does not cover another
            at = ax.transData.transform((xi, yi)) + np.array([12.0 * side, 4.0])
            if all(np.abs(at - q).max() > 9.0 for q in placed):
                placed.append(at)
                ax.annotate(style.kappa_percent(k), (xi, yi), textcoords="offset points",
                            xytext=(4 * side, 3), fontsize=5, color=c,
                            ha="left" if side > 0 else "right")
        ax.axvline(1.0, color="0.5", lw=0.8, ls=":")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xlabel("training FLOPs of the whole run\n(multiple of one dense training, log scale)")
        ax.set_ylabel("final-epoch test accuracy (%)" if metric == "final_test_acc" else metric)
        ax.set_title(f"{dataset} / {model}: accuracy vs training cost\n(labels: κ, where "
                     "they fit)")
        legend_below(fig, handles, labels, ncol=3)
        return style.save_figure(fig, out_base)


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
    df = finished_runs(runs_root)
    runs, k, d, m, seed_label = sparse_runs_at(
        df, "layer_density", dataset, model, opt_float(kappa), opt_int(seed), methods_list(methods), None
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
        ax.set_facecolor(NEVER)  # zero-density (disconnected) cells show as grey
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
            fig.legend([plt.Rectangle((0, 0), 1, 1, fc=NEVER, ec="0.6", lw=0.5)],
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
    cm = plt.get_cmap(cmap).with_extremes(bad=NEVER)
    image = ax.imshow(np.ma.masked_less_equal(freq, 0), cmap=cm, norm=norm,
                      interpolation="nearest")
    for (r, c), v in np.ndenumerate(freq):
        rgb = mcolors.to_rgb(cm(norm(v)) if v > 0 else NEVER)
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
    df = finished_runs(runs_root)
    runs, k, d, m, seed_label = sparse_runs_at(
        df,
        "kernel_patterns",
        dataset,
        model,
        opt_float(kappa),
        opt_int(seed),
        methods_list(methods),
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
                    no_data_panel(ax, "–")
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
