"""What the workflow checks before it starts any job, and so before Snakemake deletes any
output of a job it is about to run: a lock on the results folder itself, and the run folders
and existing inputs of the training jobs it is about to run.

Called from the Snakefile's ``onstart`` (main process, not on dry runs); every problem is one
line that names the file or folder and the fix, and the workflow stops with all of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

LOCK_NAME = ".hypersparse.lock"


class PreflightError(UserError, RuntimeError):
    """The workflow must not start: the message lists each problem with its fix."""


@dataclass
class PlannedRun:
    """A training job the workflow is about to run: its folder, spec and existing inputs."""

    run_dir: Path
    spec: dict[str, Any]
    data: list[Path] = field(default_factory=list)
    dense: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)  # the job's declared output files


_held: dict[str, int] = {}  # results folder -> fd of its lock (kept open by this process)


def lock_results_dir(results_dir: str | Path) -> Path | None:
    """Take an exclusive lock on ``results_dir`` for the life of this process.

    The lock is an flock on ``results_dir/.hypersparse.lock``: it dies with its holder (no
    stale locks), and it holds whichever working directory Snakemake was started from.
    Returns the lock file, or None where the file system has no flock (a warning then).
    """
    folder = Path(results_dir).resolve()
    key = str(folder)
    if key in _held:
        return folder / LOCK_NAME
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        os.close(fd)
        raise PreflightError(
            f"results_dir {folder} is in use by another workflow ({holder or 'unknown holder'}); "
            "wait for it to finish, or use another results_dir"
        ) from None
    except OSError as exc:  # e.g. ENOLCK on some network file systems
        os.close(fd)
        import logging

        logging.getLogger("hypersparse").warning(
            "cannot lock %s (%s): two workflows on this results_dir would not be kept apart",
            path, exc,
        )
        return None
    info = (f"pid {os.getpid()} on {socket.gethostname()}, started in {os.getcwd()} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode(), 0)
    _held[key] = fd
    return path


def check_planned_runs(runs: Iterable[PlannedRun]) -> list[str]:
    """Problems that must stop the workflow before any job starts (empty: go ahead).

    - A finished run that the workflow would rerun with another spec: refused (finished runs
      are never retrained). A finished run it would rerun with the same spec (forced, or
      marked incomplete by a killed Snakemake) is sealed, so the job restores its files.
    - For runs that will train: every existing data cache they read matches its checksums,
      and every existing dense file loads safely and comes from a dense run that succeeded.
    """
    from .runner import FINAL_DIR, _finished_metrics, seal
    from .spec import spec_differences

    problems: list[str] = []
    caches: dict[Path, str | None] = {}
    dense_files: dict[Path, str | None] = {}
    planned = list(runs)
    planned_dirs = {Path(r.run_dir).resolve() for r in planned}
    for run in planned:
        run_dir = Path(run.run_dir)
        done = _finished_metrics(run_dir / "metrics.json") or _finished_metrics(
            run_dir / FINAL_DIR / "metrics.json")
        if done is not None:
            old = done.get("spec")
            if isinstance(old, dict) and old != run.spec:
                problems.append(
                    f"{run_dir} is a finished run of another spec (differs in: "
                    f"{', '.join(spec_differences(old, run.spec))}); finished runs are never "
                    f"retrained: delete {run_dir} to retrain it with the current config, or set "
                    "results_dir to a new folder"
                )
                continue
            lost = [Path(o).name for o in run.outputs
                    if not Path(o).exists() and not (run_dir / FINAL_DIR / Path(o).name).exists()]
            if lost:
                problems.append(
                    f"{run_dir} is a finished run missing {', '.join(lost)}; restore the "
                    f"file(s), or delete {run_dir} to retrain it"
                )
            elif (run_dir / "metrics.json").is_file() and not (run_dir / FINAL_DIR).is_dir():
                seal(run_dir)
            continue
        for prepared in sorted({Path(p).parent for p in run.data}):
            if prepared not in caches:
                caches[prepared] = _cache_problem(prepared)
            if caches[prepared]:
                problems.append(caches[prepared])  # type: ignore[arg-type]
        for f in run.dense:
            f = Path(f)
            if f.parent.resolve() in planned_dirs:
                continue  # the dense run trains in this workflow first
            if f not in dense_files:
                dense_files[f] = _dense_problem(f)
            if dense_files[f]:
                problems.append(dense_files[f])  # type: ignore[arg-type]
    return list(dict.fromkeys(problems))


def _cache_problem(prepared: Path) -> str | None:
    """A prepared data cache that exists but does not match its meta.json, else None."""
    from .data.common import sha256_file

    meta_path = prepared / "meta.json"
    if not meta_path.is_file():
        return None  # prepare_data builds it
    fix = f"delete {prepared} and rerun: prepare_data rebuilds it"
    try:
        meta = json.loads(meta_path.read_text())
        splits = meta["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{meta_path} is unreadable ({exc}); {fix}"
    for split, rec in sorted(splits.items()):
        path = prepared / f"{split}.npz"
        if not path.is_file():
            return f"{path} is missing; {fix}"
        if path.stat().st_size != rec.get("bytes") or sha256_file(path) != rec.get("sha256"):
            return f"{path} does not match its checksum in {meta_path} (changed or corrupt); {fix}"
    return None


def _dense_problem(path: Path) -> str | None:
    """A dense input that cannot be used, else None (missing files are built by the workflow)."""
    from .io import CheckpointError, model_state, safe_torch_load
    from .runner import _finished_metrics

    run_dir = path.parent
    fix = f"delete {run_dir} to retrain the dense run"
    done = _finished_metrics(run_dir / "metrics.json")
    if done is not None and done.get("status") == "failed":
        return (f"{run_dir} is a dense run that failed ({done.get('error', 'no detail')}); "
                f"methods cannot start from it: fix its settings and {fix}")
    if not path.exists():
        return None
    try:
        obj = safe_torch_load(path)
    except CheckpointError:
        return f"{path} cannot be loaded (truncated, corrupt or unsafe); {fix}"
    state = model_state(obj)
    if not isinstance(state, dict) or not state:
        return f"{path} holds no model weights; {fix}"
    return None
