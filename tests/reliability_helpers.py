"""Helpers of the reliability tests: tiny CLI specs, folder snapshots, waiting on files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import REPO, hypersparse_cmd

# Bytes of a truncated or rewritten file count as a change, so both size and content are hashed.
Snapshot = dict[str, tuple[int, int, str]]


def tiny_spec(data_root: Path, *, epochs: int = 3, batch_size: int = 64, lr: float = 0.05,
              family: str = "dense", kappa: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A digits/resnet8 (width 0.25, 16 px) run spec as the workflow would pass it."""
    spec = {
        "dataset": "digits", "model": "resnet8", "method": family, "family": family,
        "kappa": kappa, "seed": 0, "width": 0.25, "image_size": 16,
        "data_root": str(data_root), "device": "cpu",
        "optim": {"lr": lr, "batch_size": batch_size},
        "dense": {"epochs": epochs, "milestones": [], "gamma": 0.1},
        "finetune": {"epochs": epochs, "milestones": [], "gamma": 0.1},
    }
    spec.update(extra)
    return spec


def cli_args(*args: str) -> list[str]:
    """The hypersparse console script with ``args``."""
    return [*hypersparse_cmd(), *args]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the CLI to the end; output captured as text."""
    return subprocess.run(cli_args(*args), capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not log records (log lines start with a date)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln[:4].isdigit()]


def snapshot(*roots: Path, skip: Callable[[Path], bool] = lambda p: False) -> Snapshot:
    """{path: (mtime_ns, size, sha1)} of every file under ``roots``."""
    out: Snapshot = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file() and not skip(p):
                st = p.stat()
                out[str(p)] = (st.st_mtime_ns, st.st_size, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 300,
             what: str = "condition") -> None:
    """Poll ``cond`` every 20 ms; fail if ``proc`` ends first or time runs out."""
    end = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def history_rows(run_dir: Path) -> int:
    """Epochs recorded in history.csv (written right after each epoch's checkpoint)."""
    path = Path(run_dir) / "history.csv"
    try:
        return max(len(path.read_text().splitlines()) - 1, 0)
    except OSError:
        return 0


def metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of a run folder."""
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def python_env(extra_path: Path | None = None, **env: str) -> dict[str, str]:
    """os.environ with the venv first on PATH and ``extra_path`` first on PYTHONPATH."""
    out = dict(os.environ)
    out["PATH"] = str(Path(sys.executable).parent) + os.pathsep + out.get("PATH", "")
    if extra_path is not None:
        out["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(extra_path), out.get("PYTHONPATH", "")) if p)
    out.update(env)
    return out


__all__ = ["REPO", "cli_args", "error_lines", "history_rows", "metrics", "python_env", "run_cli",
           "snapshot", "tiny_spec", "wait_for"]
