"""What a grid will cost before it starts: jobs, epochs and GPU-hours per rule and method.

Epochs per run come from each method (``Method.estimated_epochs``: LTH's rounds, xRDA's own
schedule, ART's data-dependent number of ART epochs as an assumption); seconds per epoch
come from ``benchmarks/epoch_seconds.csv``, the table the benchmarks write, one row per
(model, data set, device kind) with whether the figure was measured or extrapolated.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.names import NUM_CLASSES, TRAIN_IMAGES, base_name
from .errors import UserError

TABLE = Path(__file__).resolve().parents[2] / "benchmarks" / "epoch_seconds.csv"
TABLE_COLUMNS = ("model", "dataset", "device", "seconds_per_epoch", "status", "source")
ART_EPOCHS_ASSUMED = 40  # ART's own epochs depend on the data; the paper's runs need ~20-60


class EstimateError(UserError, ValueError):
    """A cost table that is missing or does not cover the grid."""


@dataclass(frozen=True)
class JobCost:
    """One training job of the grid and its estimated cost."""

    rule: str
    label: str
    dataset: str
    model: str
    kappa: float
    seed: int
    epochs: int
    seconds_per_epoch: float
    status: str  # measured | extrapolated (of the per-epoch figure)

    @property
    def seconds(self) -> float:
        return self.epochs * self.seconds_per_epoch


def read_table(path: Path | None = None) -> dict[tuple[str, str, str], tuple[float, str]]:
    """(model, dataset, device) -> (seconds per epoch, status) from the cost table."""
    path = Path(path or TABLE)
    if not path.is_file():
        raise EstimateError(f"the cost table {path} is missing; restore it from git or pass "
                            "--table with a CSV of columns " + ", ".join(TABLE_COLUMNS))
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(line for line in fh if not line.startswith("#")):
            key = (row["model"], row["dataset"], row["device"])
            out[key] = (float(row["seconds_per_epoch"]), row["status"])
    return out


def subset_scale(dataset: str) -> float:
    """Cost of an epoch of a pilot subset relative to the full data set (images x pixels)."""
    from .data.subset import parse

    base, sub = parse(dataset)
    if sub is None:
        return 1.0
    n = TRAIN_IMAGES.get(base, 1)
    per_class = n / NUM_CLASSES.get(base, 1)
    classes = sub.classes or NUM_CLASSES.get(base, 1)
    images = classes * min(per_class, sub.per_class or per_class)
    pixels = (sub.size / 64) ** 2 if sub.size else 1.0
    return images / n * pixels


def epoch_seconds(table: dict, model: str, dataset: str, device: str
                  ) -> tuple[float, str]:
    """Seconds per epoch of (model, dataset) on ``device`` ('gpu' or 'cpu'); a model of the
    same family and the nearest depth stands in (status 'extrapolated') if absent; a pilot
    subset scales the full data set's figure by its images and pixels (extrapolated)."""
    if subset_scale(dataset) != 1.0:
        sec, _ = epoch_seconds(table, model, base_name(dataset), device)
        return sec * subset_scale(dataset), "extrapolated"
    key = (model, base_name(dataset), device)
    if key in table:
        return table[key]
    family = model.rstrip("0123456789")
    depth = int(model[len(family):] or 0)
    same = [(m, s) for (m, d, dev), s in table.items()
            if dev == device and d == base_name(dataset) and m.startswith(family)]
    if not same:
        raise EstimateError(
            f"no seconds per epoch for {model} on {dataset} ({device}) in the cost table "
            f"{TABLE.name}: add a row (run benchmarks/bench_engine_epoch.py --table)")
    m, (sec, _) = min(same, key=lambda ms: abs(int(ms[0][len(family):] or 0) - depth))
    scale = max(depth, 1) / max(int(m[len(family):] or 1), 1)
    return sec * scale, "extrapolated"


def grid_jobs(cfg: dict[str, Any], device: str = "gpu", table: dict | None = None,
              art_epochs: int = ART_EPOCHS_ASSUMED, strict: bool = True) -> list[JobCost]:
    """Every training job of a validated config with its epochs and seconds per epoch
    (``strict=False``: 0 s and status 'unknown' where the table has no figure)."""
    from .config import grid_datasets, method_kappas, method_of, sparse_methods

    table = read_table() if table is None else table
    jobs: list[JobCost] = []
    sparse = set(sparse_methods(cfg))
    for dataset in grid_datasets(cfg):
        for model in cfg["models"]:
            try:
                sec, status = epoch_seconds(table, model, dataset, device)
            except EstimateError:
                if strict:
                    raise
                sec, status = 0.0, "unknown"
            for seed in cfg["seeds"]:
                jobs.append(JobCost("dense", "dense", dataset, model, 0.0, seed,
                                    int(cfg["dense"]["epochs"]), sec, status))
                for label in cfg["methods"]:
                    cls, built = method_of(cfg, label)
                    kappas = method_kappas(cfg, label) if label in sparse else [0.0]
                    for kappa in kappas:
                        epochs = cls.estimated_epochs(built, cfg["dense"], cfg["finetune"],
                                                      kappa, art_epochs)
                        jobs.append(JobCost("sparse", label, dataset, model, float(kappa), seed,
                                            epochs, sec, status))
    return jobs


def summarise(jobs: Iterable[JobCost]) -> list[dict[str, Any]]:
    """Per (rule, method label): jobs, epochs, GPU-hours, and whether any figure is
    extrapolated."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for j in jobs:
        r = rows.setdefault((j.rule, j.label), {"rule": j.rule, "method": j.label, "jobs": 0,
                                                "epochs": 0, "hours": 0.0,
                                                "extrapolated": False})
        r["jobs"] += 1
        r["epochs"] += j.epochs
        r["hours"] += j.seconds / 3600
        r["extrapolated"] |= j.status != "measured"
    return list(rows.values())


def format_estimate(jobs: list[JobCost], parallel: int, device: str) -> str:
    """The table `hypersparse estimate` prints."""
    rows = summarise(jobs)
    lines = [f"{'rule':7s} {'method':16s} {'jobs':>6s} {'epochs':>9s} "
             f"{f'{device.upper()} h':>9s}  per-epoch figures"]
    for r in rows:
        lines.append(f"{r['rule']:7s} {r['method']:16s} {r['jobs']:6d} {r['epochs']:9,d} "
                     f"{r['hours']:9.1f}  {'extrapolated' if r['extrapolated'] else 'measured'}")
    total_h = sum(r["hours"] for r in rows)
    lines.append(f"{'total':24s} {sum(r['jobs'] for r in rows):6d} "
                 f"{sum(r['epochs'] for r in rows):9,d} {total_h:9.1f}")
    lines.append(f"wall time with {parallel} runs at once: about "
                 f"{total_h / max(parallel, 1):.1f} h ({math.ceil(total_h / max(parallel, 1) / 24)}"
                 " days), assuming each run keeps its one-run speed (on an H100, 4 runs per GPU "
                 "gave 3.9x the throughput of one)")
    return "\n".join(lines)
