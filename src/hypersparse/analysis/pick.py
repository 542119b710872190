"""Which runs a figure shows: the run folders, the (data set, model) pair, the kappa, one run
per method in one setting; and the one error a figure raises when nothing can be drawn."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hypersparse.analysis import style
from hypersparse.analysis.runs import collect_runs, load_metrics, select_runs
from hypersparse.spec import run_relpath

from ..errors import UserError


class NothingToPlotError(UserError, ValueError):
    """Raised when the run folders hold nothing a figure can draw (the message says what)."""


def finished_runs(runs_root: Path) -> pd.DataFrame:
    """Every finished run under ``runs_root`` (NothingToPlotError if there is none)."""
    df = collect_runs(runs_root)
    if df.empty:
        raise NothingToPlotError(f"no finished runs (metrics.json) under {runs_root}")
    return df


def methods_list(methods: str | Iterable[str] | None) -> list[str] | None:
    """Accept a list or a comma-separated string (as a CLI passes it)."""
    if methods is None:
        return None
    if isinstance(methods, str):
        return [m.strip() for m in methods.split(",") if m.strip()]
    return list(methods)


def pick_pair(df: pd.DataFrame, dataset: str | None, model: str | None) -> tuple[str, str]:
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


def middle(values: Iterable[float]) -> float:
    """The middle value of the sorted distinct values (upper middle for an even count)."""
    vals = sorted(set(float(v) for v in values))
    return vals[len(vals) // 2]


def describe(**kw: Any) -> str:
    """The given selection as text for messages (``any`` if nothing was given)."""
    return ", ".join(f"{k}={v}" for k, v in kw.items() if v is not None) or "any"


def with_file(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows whose run folder holds the file ``name``."""
    has = np.array([(Path(d) / name).is_file() for d in df["run_dir"]], dtype=bool)
    return df.loc[has] if len(df) else df


def pick_run(
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
    cand = with_file(cand, need_file)
    cand = cand[cand["kappa"] > 0]
    if cand.empty:
        raise NothingToPlotError(
            f"figure {figure!r} needs a finished run of method {' or '.join(methods)} with "
            f"{need_file} ({describe(dataset=dataset, model=model, kappa=kappa, seed=seed)}); "
            "none found. Train e.g. results/runs/"
            f"{run_relpath('<dataset>', '<model>', methods[0], 0.98, 0)}."
        )
    if dataset is None or model is None:
        d, m = pick_pair(cand, dataset, model)
        cand = cand[(cand["dataset"] == d) & (cand["model"] == m)]
    k = middle(cand["kappa"]) if kappa is None else kappa
    cand = select_runs(cand, kappa=k)
    order = {m: i for i, m in enumerate(methods)}
    cand = cand.assign(_o=cand["method"].map(order)).sort_values(["_o", "seed"])
    return cand.iloc[0]


def same_setting(
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
    cand = with_file(cand, need_file)
    if cand.empty:
        return None
    return cand.sort_values("seed").iloc[0]


def run_title(r: pd.Series, *, method: bool = True) -> str:
    """'<method>, <dataset> / <model>, κ = .., seed ..' of one run (for suptitles)."""
    parts = [style.method_label(r["method"])] if method else []
    parts += [
        f"{r['dataset']} / {r['model']}",
        f"κ = {style.kappa_percent(r['kappa'])}",
        f"seed {int(r['seed'])}",
    ]
    return ", ".join(parts)


def art_epochs(run_dir: Path) -> tuple[int | None, int | None]:
    """(selected_epoch, terminated_epoch) from metrics.json's art block, if present."""
    try:
        art = load_metrics(run_dir).get("art") or {}
    except (OSError, ValueError):
        art = {}
    sel, term = art.get("selected_epoch"), art.get("terminated_epoch")
    return (None if sel is None else int(sel)), (None if term is None else int(term))


def opt_float(x: Any) -> float | None:
    """An optional option as float (CLI values may come as text)."""
    return None if x is None else float(x)


def opt_int(x: Any) -> int | None:
    """An optional option as int."""
    return None if x is None else int(x)


def art_runs(
    df: pd.DataFrame,
    figure: str,
    methods: list[str],
    dataset: str | None,
    model: str | None,
    kappa: float | None,
    seed: int | None,
) -> tuple[pd.Series, dict[str, pd.Series | None]]:
    """A reference ART run and, per method, its run in the same setting (None: not run)."""
    ref = pick_run(
        df,
        figure=figure,
        methods=methods,
        need_file="art_trace.csv",
        dataset=dataset,
        model=model,
        kappa=kappa,
        seed=seed,
    )
    found = {m: same_setting(df, ref, m, "art_trace.csv", seed) for m in methods}
    return ref, found


def sparse_runs_at(
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
        cand = with_file(cand, need_file)
    if cand.empty:
        raise NothingToPlotError(
            f"figure {figure!r} needs finished sparse runs (kappa > 0"
            f"{', with ' + need_file if need_file else ''}) "
            f"({describe(dataset=dataset, model=model, kappa=kappa, seed=seed)}); none found"
        )
    d, m = (dataset, model) if dataset and model else pick_pair(cand, dataset, model)
    cand = cand[(cand["dataset"] == d) & (cand["model"] == m)]
    k = middle(cand["kappa"]) if kappa is None else kappa
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
