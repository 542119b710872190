"""Running the real Snakemake workflow from tests (subprocess, the venv's CLI on PATH)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def snakemake_env() -> dict[str, str]:
    """Environment with the venv's bin first on PATH, as `make` sets it."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 600, check: bool = True
              ) -> subprocess.CompletedProcess:
    """Run ``snakemake ARGS`` with the repository's workflow; output captured as text."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
           *args]
    proc = subprocess.run(cmd, cwd=cwd, env=snakemake_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    counts: dict[str, int] = {}
    lines = dry_run_output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts
