"""Find and read run folders (results/runs/ + :data:`hypersparse.spec.RUN_PATTERN`).

Everything in analysis is built from these files only, so tables and figures can be rebuilt
without retraining. A folder counts as a run once its metrics.json exists (written last and
atomically by training); folders without it are unfinished and skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.names import NUM_CLASSES, base_name
from ..spec import RUN_GLOB, RUN_PATTERN, parse_run_relpath

# The tidy columns promised to callers, then a few extras useful for figures.
COLUMNS: tuple[str, ...] = (
    "dataset",
    "model",
    "method",
    "kappa",
    "seed",
    "status",
    "final_test_acc",
    "best_test_acc",
    "sparsity",
    "target_zeros",
    "num_zero",
    "sparsity_ok",
    "epochs",
    "wall_time_s",
    "run_dir",
    "error",
)
EXTRA_COLUMNS: tuple[str, ...] = (
    "method_family",
    "best_epoch",
    "final_train_acc",
    "num_prunable",
    "spec_key",
    "emergent",
    "disconnected_layers",
    "art_collapsed",
    "inference_flops_ratio",
    "train_flops_ratio",
    "params_nonzero",
    "bytes_sparse",
)
# spec fields that do not change what is trained (where the data lies, which device): runs
# differing only in these (and in the seed) are seeds of one setting
NOT_THE_SETTING = ("seed", "data_root", "device")
COLLAPSE_FACTOR = 2.0  # "collapsed": dense train accuracy at termination <= 2x chance


def spec_key(spec: dict[str, Any] | None) -> str:
    """Short hash of a run spec without the seed (and data root, device): equal keys mean the
    same setting, so their runs are seeds of one table cell."""
    import hashlib

    if not isinstance(spec, dict):
        return "unknown"
    rest = {k: v for k, v in spec.items() if k not in NOT_THE_SETTING}
    return hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]



def find_run_dirs(runs_root: Path) -> list[Path]:
    """All folders under ``runs_root`` that hold a metrics.json (finished runs), sorted."""
    runs_root = Path(runs_root)
    if not runs_root.exists():
        raise FileNotFoundError(
            f"runs folder {runs_root} does not exist; train some runs first "
            f"(results/runs/{RUN_PATTERN}/)"
        )
    return sorted(
        p.parent
        for p in runs_root.rglob("metrics.json")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(runs_root).parts)
    )


def parse_run_path(run_dir: Path, runs_root: Path | None = None) -> dict[str, Any]:
    """dataset/model/method/kappa/seed read off the folder names (empty dict if no match)."""
    return parse_run_relpath(Path(run_dir).parts) or {}


def load_metrics(run_dir: Path) -> dict[str, Any]:
    """The parsed metrics.json of a run folder."""
    with open(Path(run_dir) / "metrics.json", encoding="utf-8") as fh:
        return json.load(fh)


def _num(x: Any) -> float:
    """float(x), NaN for None / non-numbers (so columns stay numeric)."""
    if x is None or isinstance(x, bool):
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _int_or_none(x: Any) -> int | None:
    """int(x) for integral numbers, None otherwise."""
    v = _num(x)
    return None if math.isnan(v) else int(v)


def run_record(run_dir: Path) -> dict[str, Any]:
    """One tidy row for a finished run folder (status 'failed' if metrics.json is unreadable)."""
    run_dir = Path(run_dir)
    from_path = parse_run_path(run_dir)
    try:
        m = load_metrics(run_dir)
        if not isinstance(m, dict):
            raise ValueError("top level is not an object")
    except (OSError, ValueError) as exc:
        m = {"status": "failed", "error": f"unreadable metrics.json: {exc}"}
    rec: dict[str, Any] = {}
    for key in ("dataset", "model", "method"):
        rec[key] = m.get(key) if m.get(key) is not None else from_path.get(key)
    rec["kappa"] = _num(m.get("kappa", from_path.get("kappa")))
    seed = m.get("seed", from_path.get("seed"))
    rec["seed"] = _int_or_none(seed)
    status = m.get("status")
    rec["status"] = status if status in ("ok", "failed") else "failed"
    rec["error"] = m.get("error") or (
        None if status in ("ok", "failed") else f"unknown status {status!r} in metrics.json"
    )
    ok = rec["status"] == "ok"
    for key in ("final_test_acc", "best_test_acc", "sparsity", "final_train_acc", "wall_time_s"):
        rec[key] = _num(m.get(key)) if ok else math.nan
    for key in ("target_zeros", "num_zero", "num_prunable", "epochs", "best_epoch"):
        rec[key] = _int_or_none(m.get(key))
    # The sparsity check is recomputed from the counts when both exist (the contract:
    # sparsity_ok == (num_zero == target_zeros)); xrda has no target, so it stays None.
    if ok and rec["num_zero"] is not None and rec["target_zeros"] is not None:
        rec["sparsity_ok"] = rec["num_zero"] == rec["target_zeros"]
    elif ok and isinstance(m.get("sparsity_ok"), bool):
        rec["sparsity_ok"] = m["sparsity_ok"]
    else:
        rec["sparsity_ok"] = None
    rec["method_family"] = m.get("method_family")
    rec["run_dir"] = str(run_dir)
    rec["spec_key"] = spec_key(m.get("spec"))
    # emergent sparsity (xRDA): no target, not dense - it belongs to no kappa column
    rec["emergent"] = bool(ok and m.get("target_zeros") is None
                           and m.get("method_family") not in (None, "dense"))
    rec["disconnected_layers"] = len(m.get("disconnected_layers") or []) if ok else 0
    art = m.get("art") if isinstance(m.get("art"), dict) else {}
    classes = m.get("num_classes") or NUM_CLASSES.get(base_name(str(rec["dataset"])))
    dense_acc = _num(art.get("dense_train_acc_at_termination"))
    rec["art_collapsed"] = bool(ok and classes and not math.isnan(dense_acc)
                                and dense_acc <= COLLAPSE_FACTOR * 100.0 / classes)
    fl = m.get("flops") if isinstance(m.get("flops"), dict) else {}
    rec["inference_flops_ratio"] = _num(fl.get("inference_ratio")) if ok else math.nan
    rec["train_flops_ratio"] = _num(fl.get("train_ratio")) if ok else math.nan
    size = m.get("size") if isinstance(m.get("size"), dict) else {}
    rec["params_nonzero"] = _int_or_none(size.get("params_nonzero"))
    rec["bytes_sparse"] = _int_or_none(size.get("bytes_sparse"))
    return rec


def collect_runs(runs_root: Path) -> pd.DataFrame:
    """One row per finished run folder under ``runs_root`` (tidy columns, see COLUMNS).

    Unfinished folders (no metrics.json) are skipped; failed runs are rows with status
    'failed' and NaN accuracies. Rows are sorted by dataset, model, method, kappa, seed.
    """
    rows = [run_record(d) for d in find_run_dirs(runs_root)]
    df = pd.DataFrame(rows, columns=list(COLUMNS + EXTRA_COLUMNS))
    if df.empty:
        return df
    for col in ("seed", "target_zeros", "num_zero", "num_prunable", "epochs", "best_epoch",
                "params_nonzero", "bytes_sparse"):
        df[col] = df[col].astype("Int64")
    df["sparsity_ok"] = df["sparsity_ok"].astype("boolean")
    df = df.sort_values(["dataset", "model", "method", "kappa", "seed"], na_position="last")
    return df.reset_index(drop=True)


def select_runs(
    df: pd.DataFrame,
    *,
    dataset: str | None = None,
    model: str | None = None,
    method: str | None = None,
    kappa: float | None = None,
    seed: int | None = None,
    status: str | None = "ok",
) -> pd.DataFrame:
    """Rows of ``df`` matching every given field (kappa compared with a float tolerance)."""
    keep = pd.Series(True, index=df.index)
    for col, val in (("dataset", dataset), ("model", model), ("method", method)):
        if val is not None:
            keep &= df[col] == val
    if kappa is not None:
        keep &= np.isclose(df["kappa"].astype(float), float(kappa), rtol=0, atol=1e-9)
    if seed is not None:
        keep &= df["seed"] == int(seed)
    if status is not None:
        keep &= df["status"] == status
    return df[keep]


def load_history(run_dir: Path) -> pd.DataFrame:
    """history.csv of a run (one row per epoch)."""
    return pd.read_csv(Path(run_dir) / "history.csv")


def load_art_trace_csv(run_dir: Path) -> pd.DataFrame:
    """art_trace.csv of an ART run (one row per ART epoch)."""
    return pd.read_csv(Path(run_dir) / "art_trace.csv")


def load_art_trace_npz(run_dir: Path) -> dict[str, np.ndarray]:
    """All arrays of art_trace.npz (loaded eagerly, no pickles)."""
    with np.load(Path(run_dir) / "art_trace.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_state(run_dir: Path) -> dict[str, Any]:
    """model.pt of a run: the final state dict (tensors only, loaded safely).

    A file that is not a safe checkpoint of tensors is a CheckpointError naming it.
    """
    from hypersparse.io import CheckpointError, safe_torch_load

    state = safe_torch_load(Path(run_dir) / "model.pt")
    if not isinstance(state, dict):
        raise CheckpointError(f"{Path(run_dir) / 'model.pt'} holds no state dict")
    return state


def load_prunable_weights(run_dir: Path) -> list[tuple[str, np.ndarray]]:
    """(key, weight array) for the prunable weights in model.pt, in state-dict order."""
    state = load_state(run_dir)
    from hypersparse.masks import prunable_state_items  # torch only where weights are read

    return [(k, v.detach().float().cpu().numpy()) for k, v in prunable_state_items(state)]


def write_job_benchmarks(bench_root: Path, out: Path) -> Path:
    """One CSV of Snakemake's per-job benchmark files (wall time s, peak RSS MB, ...).

    Files are ``{bench_root}/<RUN_PATTERN>.tsv`` as the training rules declare them; the
    path parts become columns.
    """
    rows = []
    for tsv in sorted(Path(bench_root).glob(f"{RUN_GLOB}.tsv")):
        ident = parse_run_relpath(tsv.relative_to(bench_root).with_suffix("").parts)
        frame = pd.read_csv(tsv, sep="\t")
        if ident is None or frame.empty:
            continue
        rows.append({**frame.iloc[-1].to_dict(), **ident})
    cols = ["dataset", "model", "method", "kappa", "seed"]
    table = pd.DataFrame(rows)
    table = table[cols + [c for c in table.columns if c not in cols]] if rows else pd.DataFrame(
        columns=cols)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(out)
    return out
