"""Where a grid stands: finished / running / interrupted / failed / pending runs per table,
and an ETA from the runs' own ``history.csv`` seconds.

A run is *running* while a process holds its folder's lock (``run_dir/.lock``), *interrupted*
when it has a checkpoint but nobody trains it, *pending* when nothing of it exists yet.
Remaining work: epochs left (``Method.estimated_epochs`` minus those in its history) times
seconds per epoch, measured from the run itself, else from finished runs of the same data set
and model, else from the cost table of :mod:`hypersparse.estimate`.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATES = ("finished", "failed", "running", "interrupted", "pending")


def hms(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class RunState:
    """One cell of the grid and where it stands."""

    dataset: str
    model: str
    label: str
    kappa: float
    seed: int
    run_dir: Path
    state: str
    epochs_done: int
    epochs_total: int
    epoch_seconds: list[float]


def _history_seconds(run_dir: Path) -> list[float]:
    path = run_dir / "history.csv"
    try:
        with open(path, newline="") as fh:
            return [float(r["seconds"]) for r in csv.DictReader(fh) if r.get("seconds")]
    except (OSError, ValueError, KeyError):
        return []


def _locked(run_dir: Path) -> bool:
    """True while another process holds the run folder's lock."""
    import fcntl

    path = run_dir / ".lock"
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def run_state(run_dir: Path) -> tuple[str, int, list[float]]:
    """(state, epochs recorded, seconds of each recorded epoch) of one run folder."""
    run_dir = Path(run_dir)
    seconds = _history_seconds(run_dir)
    m = run_dir / "metrics.json"
    if m.is_file():
        try:
            status = json.loads(m.read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status == "ok":
            return "finished", len(seconds), seconds
        if status == "failed":
            return "failed", len(seconds), seconds
    if _locked(run_dir):
        return "running", len(seconds), seconds
    if (run_dir / "ckpt").is_dir() or seconds:
        return "interrupted", len(seconds), seconds
    return "pending", 0, []


def grid_status(cfg: dict[str, Any], art_epochs: int) -> list[RunState]:
    """Every training run of a validated config and its state."""
    from .config import run_dir as path_of
    from .estimate import grid_jobs

    out = []
    for j in grid_jobs(cfg, table={}, art_epochs=art_epochs, strict=False):
        run = Path(path_of(cfg, j.dataset, j.model, j.label, j.kappa, j.seed))
        state, done, seconds = run_state(run)
        out.append(RunState(j.dataset, j.model, j.label, j.kappa, j.seed, run, state, done,
                            max(j.epochs, done), seconds))
    return out


def remaining_seconds(runs: list[RunState], table: dict, device: str) -> tuple[float, int]:
    """(seconds of training left over all runs, runs whose rate came from the cost table)."""
    from .estimate import epoch_seconds

    per_grid: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        per_grid.setdefault((r.dataset, r.model), []).extend(r.epoch_seconds)
    total, guessed = 0.0, 0
    for r in runs:
        if r.state in ("finished", "failed"):
            continue
        left = max(r.epochs_total - r.epochs_done, 0)
        if r.epoch_seconds:
            rate = statistics.median(r.epoch_seconds)
        elif per_grid.get((r.dataset, r.model)):
            rate = statistics.median(per_grid[(r.dataset, r.model)])
        else:
            try:
                rate = epoch_seconds(table, r.model, r.dataset, device)[0]
            except ValueError:
                rate = 0.0
            guessed += 1
        total += left * rate
    return total, guessed


def format_status(runs: list[RunState], parallel: int, table: dict, device: str) -> str:
    """The table `hypersparse status` prints, with the ETA."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for r in runs:
        c = counts.setdefault((r.dataset, r.model), dict.fromkeys(STATES, 0))
        c[r.state] += 1
    lines = [f"{'table':24s} " + " ".join(f"{s:>11s}" for s in STATES) + f" {'total':>6s}"]
    for (d, m), c in sorted(counts.items()):
        lines.append(f"{d + '_' + m:24s} " + " ".join(f"{c[s]:11d}" for s in STATES)
                     + f" {sum(c.values()):6d}")
    allc = {s: sum(c[s] for c in counts.values()) for s in STATES}
    lines.append(f"{'all':24s} " + " ".join(f"{allc[s]:11d}" for s in STATES)
                 + f" {sum(allc.values()):6d}")
    left, guessed = remaining_seconds(runs, table, device)
    eta = left / max(parallel, 1)
    lines.append(
        f"training left: {left / 3600:.1f} {device.upper()}-hours; ETA with {parallel} runs "
        f"at once: {hms(eta)}" + (f" ({guessed} runs timed from the cost table)" if guessed
                                   else " (from the runs' own epoch times)"))
    bad = [r for r in runs if r.state == "failed"]
    if bad:
        lines.append("failed: " + ", ".join(str(r.run_dir) for r in bad[:5])
                     + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    return "\n".join(lines)
