"""Result tables from run folders: tidy CSVs, Markdown and LaTeX (booktabs), replication table.

Aggregation rules (stated once, used everywhere):
- Per (dataset, model, method, kappa) the successful seeds (status 'ok') are aggregated:
  mean and *sample* standard deviation (ddof=1). With a single seed the std is undefined:
  it is left blank (NaN) in CSVs and the cell shows the value without "±".
- A cell whose seeds all failed shows "failed"; a cell with some failed seeds shows the mean
  of the others, marked ‡. A cell with a run whose zero count missed floor(kappa*N)
  (sparsity_ok false) is marked †, and is not eligible for bold. Missing runs: empty cell.
- Bold (LaTeX and Markdown) marks the best displayed mean per column when at least two
  eligible cells exist; ties are all bold.
- Two variants: final-epoch test accuracy (the headline) and best-epoch test accuracy, which
  is *selected on the test set* (what the authors report) and therefore optimistic.
- A cell averages seeds of one setting only: runs of the same label whose specs differ (other
  than in the seed) are a conflict, shown as such and listed, never averaged.
- Methods with emergent sparsity (xRDA: no kappa target) get a table of their own with the
  sparsity they reached, never a place in the dense 0% column.
- Marks § (a layer lost every weight: the network is disconnected) and ¶ (ART's dense model
  collapsed: its training accuracy at termination was at most twice chance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from hypersparse.analysis.runs import collect_runs
from hypersparse.analysis.style import kappa_percent, method_label, sort_methods

DECIMALS = 1
REP_DECIMALS = 2  # the published table has two decimals
METRICS: dict[str, str] = {
    "final_test_acc": "Final-epoch test accuracy (%)",
    "best_test_acc": "Best-epoch test accuracy (%), best epoch selected on the test set "
    "(optimistic; the authors' reported metric)",
}
GROUP_KEYS = ["dataset", "model", "method", "kappa"]
MARK_SPARSITY = "†"
MARK_FAILED = "‡"
MARK_DISCONNECTED = "§"
MARK_COLLAPSED = "¶"
_TEX_MARKS = {MARK_SPARSITY: r"\dagger", MARK_FAILED: r"\ddagger", MARK_DISCONNECTED: r"\S",
              MARK_COLLAPSED: r"\P"}
FOOTNOTES = (
    "Cells: mean ± sample standard deviation (ddof=1) over seeds; a value without ± is a "
    "single seed. Empty cell: not run (or not finished).",
    f"{MARK_SPARSITY} at least one run missed its target sparsity (number of zero weights != "
    "floor(kappa * N)); such cells are never bold.",
    f"{MARK_FAILED} some seeds failed; mean over the successful seeds. 'failed': every seed failed.",
    f"{MARK_DISCONNECTED} a layer lost every weight (the network is disconnected there).",
    f"{MARK_COLLAPSED} ART's dense model collapsed: its training accuracy at termination was at "
    "most twice chance. 'conflict': runs of this label with different settings (not averaged; "
    "listed below).",
)
FLOP_METRICS: dict[str, str] = {
    "train_flops_ratio": "Training FLOPs of the whole run (x dense training)",
    "inference_flops_ratio": "Inference FLOPs of the final model (x dense)",
}


def default_paper_targets() -> Path | None:
    """config/paper_targets.csv of the source checkout, if it is there."""
    p = Path(__file__).resolve().parents[3] / "config" / "paper_targets.csv"
    return p if p.is_file() else None


def _std(x: pd.Series) -> float:
    """Sample std (ddof=1); NaN for fewer than two values."""
    x = x.dropna()
    return float(x.std(ddof=1)) if len(x) >= 2 else math.nan


def _mean(x: pd.Series) -> float:
    """Mean of the non-NaN values; NaN if none."""
    x = x.dropna()
    return float(x.mean()) if len(x) else math.nan


def _sparsity_ok_all(x: pd.Series) -> object:
    """False if any run missed its target, True if all checked ones hit it, NA if unchecked."""
    vals = [bool(v) for v in x if v is not pd.NA and v is not None and not _isnan(v)]
    if not vals:
        return pd.NA
    return all(vals)


def _isnan(v: object) -> bool:
    """True for a float NaN (numpy floats included)."""
    return isinstance(v, float | np.floating) and math.isnan(v)


def _is_false(v: object) -> bool:
    """True only for a real False (not NA / None / NaN)."""
    if v is None or v is pd.NA or _isnan(v):
        return False
    return not bool(v)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, method, kappa): counts, mean/std of final and best acc."""
    cols = GROUP_KEYS + [
        "n_runs",
        "n_seeds",
        "n_failed",
        "seeds",
        "final_test_acc_mean",
        "final_test_acc_std",
        "best_test_acc_mean",
        "best_test_acc_std",
        "sparsity_mean",
        "sparsity_ok_all",
        "n_specs",
        "emergent",
        "disconnected",
        "art_collapsed",
        "train_flops_ratio_mean",
        "train_flops_ratio_std",
        "inference_flops_ratio_mean",
        "inference_flops_ratio_std",
        "conflict_runs",
    ]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    runs = runs.copy()
    runs["kappa"] = runs["kappa"].astype(float).round(10)
    out = []
    for key, g in runs.groupby(GROUP_KEYS, sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        row = dict(zip(GROUP_KEYS, key, strict=True))
        keys = g["spec_key"].astype(str) if "spec_key" in g else pd.Series(["?"] * len(g))
        specs = sorted(set(keys) - {"unknown"})  # a run without a spec conflicts with none
        row.update(
            n_specs=max(len(specs), 1),
            emergent=_any_flag(ok, "emergent"),
            disconnected=bool((ok.get("disconnected_layers", pd.Series(dtype=float))
                               .fillna(0) > 0).any()),
            art_collapsed=_any_flag(ok, "art_collapsed"),
            train_flops_ratio_mean=_mean(ok.get("train_flops_ratio", pd.Series(dtype=float))),
            train_flops_ratio_std=_std(ok.get("train_flops_ratio", pd.Series(dtype=float))),
            inference_flops_ratio_mean=_mean(ok.get("inference_flops_ratio",
                                                    pd.Series(dtype=float))),
            inference_flops_ratio_std=_std(ok.get("inference_flops_ratio",
                                                  pd.Series(dtype=float))),
            conflict_runs=";".join(f"{k}={d}" for k, d in zip(keys, g["run_dir"].astype(str),
                                                               strict=True))
            if len(specs) > 1 else "",
        )
        row.update(
            n_runs=len(g),
            n_seeds=len(ok),
            n_failed=int((g["status"] != "ok").sum()),
            seeds=",".join(str(s) for s in sorted(ok["seed"].dropna().astype(int))),
            final_test_acc_mean=_mean(ok["final_test_acc"]),
            final_test_acc_std=_std(ok["final_test_acc"]),
            best_test_acc_mean=_mean(ok["best_test_acc"]),
            best_test_acc_std=_std(ok["best_test_acc"]),
            sparsity_mean=_mean(ok["sparsity"]),
            sparsity_ok_all=_sparsity_ok_all(ok["sparsity_ok"]),
        )
        if len(specs) > 1:  # different settings: reported, never averaged
            for k in list(row):
                if k.endswith(("_mean", "_std")):
                    row[k] = math.nan
        out.append(row)
    agg = pd.DataFrame(out, columns=cols)
    agg["sparsity_ok_all"] = agg["sparsity_ok_all"].astype("boolean")
    order = {m: i for i, m in enumerate(sort_methods(agg["method"]))}
    agg["_o"] = agg["method"].map(order)
    agg = agg.sort_values(["dataset", "model", "_o", "kappa"]).drop(columns="_o")
    return agg.reset_index(drop=True)


def _any_flag(rows: pd.DataFrame, col: str) -> bool:
    """True if any row has ``col`` set (False when the column is absent)."""
    return bool(rows[col].fillna(False).astype(bool).any()) if col in rows else False


def _fmt(x: float, decimals: int = DECIMALS) -> str:
    """A number with a fixed number of decimals."""
    return f"{x:.{decimals}f}"


def format_cell(row: pd.Series | None, metric: str, *, latex: bool = False) -> str:
    """Display text of one aggregated cell (see module docstring for the marks)."""
    if row is None:
        return ""
    if int(row.get("n_specs", 1) or 1) > 1:
        return f"conflict ({int(row['n_specs'])} specs)"
    if row["n_seeds"] == 0:
        return "failed" if row["n_failed"] > 0 else ""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if _isnan(mean):
        return "n/a"
    decimals = 3 if metric.endswith("_ratio") else DECIMALS
    pm = r" $\pm$ " if latex else " ± "
    text = _fmt(mean, decimals) + (pm + _fmt(std, decimals) if not _isnan(std) else "")
    marks = ""
    if _is_false(row["sparsity_ok_all"]):
        marks += MARK_SPARSITY
    if row["n_failed"] > 0:
        marks += MARK_FAILED
    if bool(row.get("disconnected", False)):
        marks += MARK_DISCONNECTED
    if bool(row.get("art_collapsed", False)):
        marks += MARK_COLLAPSED
    if marks and latex:
        marks = "$^{" + "".join(_TEX_MARKS[c] for c in marks) + "}$"
    return text + marks


def _eligible_for_bold(row: pd.Series, metric: str) -> bool:
    """A cell competes for bold if it has a number and hit its sparsity target."""
    if row["n_seeds"] == 0 or _isnan(row[f"{metric}_mean"]) or int(row.get("n_specs", 1)) > 1:
        return False
    return not _is_false(row["sparsity_ok_all"])


def wide_cells(
    agg: pd.DataFrame, metric: str, *, latex: bool = False
) -> tuple[list[str], list[float], list[list[str]], list[list[bool]]]:
    """(methods, kappas, cell texts [method][kappa], bold flags) for one (dataset, model)."""
    if "emergent" in agg:  # emergent sparsity has a table of its own
        agg = agg[~agg["emergent"].fillna(False).astype(bool)]
    methods = sort_methods(agg["method"])
    kappas = sorted(set(float(k) for k in agg["kappa"]))
    lookup = {(r["method"], float(r["kappa"])): r for _, r in agg.iterrows()}
    cells = [
        [format_cell(lookup.get((m, k)), metric, latex=latex) for k in kappas] for m in methods
    ]
    bold = [[False] * len(kappas) for _ in methods]
    for j, k in enumerate(kappas):
        cand = [
            (i, round(float(lookup[(m, k)][f"{metric}_mean"]), DECIMALS))
            for i, m in enumerate(methods)
            if (m, k) in lookup and _eligible_for_bold(lookup[(m, k)], metric)
        ]
        if len(cand) >= 2:
            best = max(v for _, v in cand)
            for i, v in cand:
                bold[i][j] = v == best
    return methods, kappas, cells, bold


def _kappa_header(k: float) -> str:
    return kappa_percent(k)


def markdown_table(agg: pd.DataFrame, metric: str) -> str:
    """Markdown table: rows = methods, columns = pruning rates (0% = dense)."""
    methods, kappas, cells, bold = wide_cells(agg, metric)
    if not methods:
        return "_No finished runs._\n"
    head = "| Method | " + " | ".join(_kappa_header(k) for k in kappas) + " |"
    sep = "|:--|" + "|".join("--:" for _ in kappas) + "|"
    lines = [head, sep]
    for i, m in enumerate(methods):
        row = [f"**{c}**" if bold[i][j] and c else c for j, c in enumerate(cells[i])]
        lines.append(f"| {method_label(m)} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(s: str) -> str:
    """Escape LaTeX special characters in plain text."""
    return "".join(_TEX_ESCAPES.get(c, c) for c in s)


def latex_table(agg: pd.DataFrame, metric: str, *, caption: str, label: str) -> str:
    """A booktabs table float (needs \\usepackage{booktabs}); best per column in bold."""
    methods, kappas, cells, bold = wide_cells(agg, metric, latex=True)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{tex_escape(caption)}}}",
        rf"\label{{{label}}}",
        r"\begin{tabular}{l" + "r" * len(kappas) + "}",
        r"\toprule",
        "Method & " + " & ".join(tex_escape(_kappa_header(k)) for k in kappas) + r" \\",
        r"\midrule",
    ]
    for i, m in enumerate(methods):
        row = [rf"\textbf{{{c}}}" if bold[i][j] and c else c for j, c in enumerate(cells[i])]
        lines.append(tex_escape(method_label(m)) + " & " + " & ".join(row) + r" \\")
    if not methods:
        lines.append(r"\multicolumn{1}{l}{No finished runs.} \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = [FOOTNOTES[0]] + [
        note.replace(note[0], f"$^{_TEX_MARKS[note[0]]}$", 1) for note in FOOTNOTES[1:]
    ]
    lines.append(r"\par\smallskip{\footnotesize " + " ".join(_tex_note(n) for n in notes) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _tex_note(note: str) -> str:
    """Escape a footnote but keep its $...$ math marks."""
    parts = note.split("$")
    return "".join(
        f"${p}$" if i % 2 else tex_escape(p).replace("±", r"$\pm$") for i, p in enumerate(parts)
    )


def _seed_range(agg: pd.DataFrame) -> str:
    n = agg.loc[agg["n_seeds"] > 0, "n_seeds"]
    if n.empty:
        return "none"
    return f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())} to {int(n.max())}"


def write_runs_csv(runs: pd.DataFrame, out_dir: Path) -> Path:
    """out_dir/runs.csv: the tidy one-row-per-run table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "runs.csv"
    runs.to_csv(path, index=False)
    return path


def emergent_markdown(agg: pd.DataFrame) -> str:
    """The methods without a kappa target (xRDA), at the sparsity they reached."""
    rows = agg[agg["emergent"].fillna(False).astype(bool)] if "emergent" in agg else agg[:0]
    if rows.empty:
        return ""
    lines = ["## Emergent sparsity (no kappa target): accuracy at the sparsity reached\n",
             "| Method | sparsity (%) | final-epoch acc (%) | best-epoch acc (%), test-selected |",
             "|:--|--:|--:|--:|"]
    for _, r in rows.iterrows():
        lines.append(f"| {method_label(r['method'])} | {100 * r['sparsity_mean']:.2f} | "
                     f"{format_cell(r, 'final_test_acc')} | {format_cell(r, 'best_test_acc')} |")
    return "\n".join(lines) + "\n"


def conflicts_markdown(agg: pd.DataFrame) -> str:
    """Cells whose runs have different settings, with their run folders."""
    rows = agg[agg["n_specs"].fillna(1).astype(int) > 1] if "n_specs" in agg else agg[:0]
    if rows.empty:
        return ""
    lines = ["## Conflicting runs (one label, different settings: not averaged)\n"]
    for _, r in rows.iterrows():
        by_spec: dict[str, list[str]] = {}
        for item in str(r["conflict_runs"]).split(";"):
            key, _, folder = item.partition("=")
            by_spec.setdefault(key, []).append(folder)
        lines.append(f"- {method_label(r['method'])} at {kappa_percent(r['kappa'])}: " + "; ".join(
            f"setting {k}: " + ", ".join(f"`{d}`" for d in ds) for k, ds in by_spec.items()))
    return "\n".join(lines) + "\n"


def write_table(
    runs_root: Path,
    out_dir: Path,
    dataset: str,
    model: str,
    *,
    runs: pd.DataFrame | None = None,
    flops: bool = False,
) -> list[Path]:
    """Write {dataset}_{model}.csv/.md/.tex (always, even with no runs: then a note)."""
    runs = collect_runs(runs_root) if runs is None else runs
    sub = runs[(runs["dataset"] == dataset) & (runs["model"] == model)] if not runs.empty else runs
    agg = aggregate(sub)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{dataset}_{model}"
    paths = [base.with_name(base.name + ext) for ext in (".csv", ".md", ".tex")]
    agg.to_csv(paths[0], index=False)

    from hypersparse.data.subset import parse as parse_dataset

    base_name, pilot = parse_dataset(dataset)
    title = f"{dataset} / {model}"
    md = [f"# {title}: test accuracy (%) by pruning rate kappa\n"]
    if pilot is not None:
        title += f" (pilot subset of {base_name}: {pilot.describe()})"
        md.append(f"**Pilot subset of {base_name}: {pilot.describe()}. A rehearsal of the "
                  "protocol, not comparable with the paper's numbers.**\n")
    shown = {**METRICS, **(FLOP_METRICS if flops else {})}
    for metric, desc in shown.items():
        md.append(f"## {desc}\n")
        md.append(markdown_table(agg, metric))
    for extra in (emergent_markdown(agg), conflicts_markdown(agg)):
        if extra:
            md.append(extra)
    md.append(f"Seeds per cell: {_seed_range(agg)}.\n")
    md += [f"- {n}" for n in FOOTNOTES]
    paths[1].write_text("\n".join(md) + "\n", encoding="utf-8")

    tex = [
        f"% {title}: generated by hypersparse.analysis.tables from run folders; "
        "needs \\usepackage{booktabs}.",
    ]
    for metric, desc in shown.items():
        tex.append(
            latex_table(
                agg,
                metric,
                caption=f"{title}: {desc}. Seeds per cell: {_seed_range(agg)}.",
                label=f"tab:{dataset}_{model}_{metric.split('_')[0]}",
            )
        )
    paths[2].write_text("\n".join(tex), encoding="utf-8")
    return paths


def read_paper_targets(path: Path) -> pd.DataFrame:
    """config/paper_targets.csv: dataset, model, method, kappa, test_acc, metric[, source]."""
    t = pd.read_csv(path)
    need = {"dataset", "model", "method", "kappa", "test_acc", "metric"}
    missing = need - set(t.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; needs {sorted(need)}")
    t["kappa"] = t["kappa"].astype(float)
    return t


def replication_frame(runs: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Published value vs ours (mean, std, n, difference) for every target cell."""
    agg = aggregate(runs)
    rows = []
    for _, t in targets.iterrows():
        metric = str(t["metric"])
        match = agg[
            (agg["dataset"] == t["dataset"])
            & (agg["model"] == t["model"])
            & (agg["method"] == t["method"])
            & np.isclose(agg["kappa"].astype(float), float(t["kappa"]), rtol=0, atol=1e-9)
        ]
        r = match.iloc[0] if len(match) else None
        mean = float(r[f"{metric}_mean"]) if r is not None else math.nan
        rows.append(
            {
                "dataset": t["dataset"],
                "model": t["model"],
                "method": t["method"],
                "kappa": float(t["kappa"]),
                "metric": metric,
                "published": float(t["test_acc"]),
                "ours_mean": mean,
                "ours_std": float(r[f"{metric}_std"]) if r is not None else math.nan,
                "diff": mean - float(t["test_acc"]),
                "n_seeds": int(r["n_seeds"]) if r is not None else 0,
                "n_failed": int(r["n_failed"]) if r is not None else 0,
                "ours_final_mean": float(r["final_test_acc_mean"]) if r is not None else math.nan,
                "ours_final_std": float(r["final_test_acc_std"]) if r is not None else math.nan,
                "sparsity_ok_all": r["sparsity_ok_all"] if r is not None else pd.NA,
            }
        )
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, decimals: int = DECIMALS) -> str:
    """'mean ± std' ('mean' for one seed, '' for none)."""
    if _isnan(mean):
        return ""
    return _fmt(mean, decimals) + ("" if _isnan(std) else f" ± {_fmt(std, decimals)}")


def write_replication(
    runs_root: Path,
    out_dir: Path,
    paper_targets: Path | None = None,
    *,
    runs: pd.DataFrame | None = None,
) -> list[Path]:
    """Write replication.csv/.md: published numbers next to ours for the cells that were run."""
    paper_targets = paper_targets or default_paper_targets()
    if paper_targets is None:
        raise FileNotFoundError("no paper targets CSV given and config/paper_targets.csv not found")
    runs = collect_runs(runs_root) if runs is None else runs
    rep = replication_frame(runs, read_paper_targets(Path(paper_targets)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "replication.csv", out_dir / "replication.md"]
    rep.to_csv(paths[0], index=False)
    md = [
        "# Replication: published ART + HyperSparse results vs this project\n",
        "Published numbers are the authors' best test accuracy over the fine-tuning epochs "
        "(best epoch selected on the test set); 'ours' uses the same metric (column `metric`). "
        "'ours final' is the final-epoch accuracy. diff = ours - published (percentage points). "
        "Empty: not run.\n",
        "| Data set | Model | Method | kappa | published | ours | diff | n | ours final |",
        "|:--|:--|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for _, r in rep.iterrows():
        ours = _pm(r["ours_mean"], r["ours_std"], REP_DECIMALS)
        if r["n_seeds"] == 0 and r["n_failed"] > 0:
            ours = "failed"
        elif ours and r["n_failed"] > 0:
            ours += MARK_FAILED
        if ours and _is_false(r["sparsity_ok_all"]):
            ours += MARK_SPARSITY
        diff = "" if _isnan(r["diff"]) else f"{r['diff']:+.{REP_DECIMALS}f}"
        n = str(r["n_seeds"]) if r["n_seeds"] or r["n_failed"] else ""
        md.append(
            f"| {r['dataset']} | {r['model']} | {method_label(r['method'])} | "
            f"{kappa_percent(r['kappa'])} | {_fmt(r['published'], REP_DECIMALS)} | {ours} | "
            f"{diff} | {n} | "
            f"{_pm(r['ours_final_mean'], r['ours_final_std'], REP_DECIMALS)} |"
        )
    md.append("")
    md += [f"- {n}" for n in FOOTNOTES[1:]]
    paths[1].write_text("\n".join(md) + "\n", encoding="utf-8")
    return paths


def _pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    if runs.empty:
        return []
    pairs = runs[["dataset", "model"]].dropna().drop_duplicates()
    return sorted((str(d), str(m)) for d, m in pairs.itertuples(index=False))


def write_tables(
    runs_root: Path,
    out_dir: Path,
    *,
    paper_targets: Path | None = None,
    datasets: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
) -> list[Path]:
    """Write runs.csv, one table set per (dataset, model) present, and the replication table.

    ``datasets`` / ``models`` restrict the tables written; ``paper_targets`` defaults to the
    checkout's config/paper_targets.csv (skipped if neither exists). Returns the paths written.
    """
    runs = collect_runs(runs_root)
    paths = [write_runs_csv(runs, out_dir)]
    ds = set(datasets) if datasets is not None else None
    ms = set(models) if models is not None else None
    for d, m in _pairs(runs):
        if (ds is None or d in ds) and (ms is None or m in ms):
            paths += write_table(runs_root, out_dir, d, m, runs=runs)
    targets = paper_targets or default_paper_targets()
    if targets is not None:
        paths += write_replication(runs_root, out_dir, targets, runs=runs)
    return paths
