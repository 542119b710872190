"""Every command the README shows works as written.

Commands are read from the README's code blocks (and its inline `snakemake ...` /
`hypersparse ...` / `make ...` spans) and run here: the `hypersparse` commands for real, in
order, in a scratch folder (digits data; CIFAR without network must fail with the URL);
`snakemake` commands as written plus `-n` (a dry run of the whole grid: DAG, config
validation, targets) in a scratch directory; `make` targets with `make -n`. Only `source` and
the TensorBoard server are not run. A new command in the README is picked up automatically.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from reliability_helpers import python_env

README = (REPO / "README.md").read_text()
PREFIXES = ("hypersparse ", "snakemake ", "make ", "bash benchmarks/")


def readme_commands() -> list[str]:
    """Shell commands of the README, continuation lines joined, comments dropped."""
    out: list[str] = []
    blocks, inside, lang, lines = [], False, "", []
    for line in README.splitlines():
        if line.startswith("```"):
            if inside and lang in ("", "bash"):
                blocks.append("\n".join(lines))
            inside, lang, lines = not inside, line[3:].strip(), []
        elif inside:
            lines.append(line)
    for block in blocks:
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #", 1)[0].split("# ", 1)[0].strip() if "#" in line else \
                line.strip()
            if line.startswith(PREFIXES):
                out.append(" ".join(line.split()))
    for span in re.findall(r"`((?:snakemake|hypersparse|make) [^`]+)`", README):
        words = span.split()
        if any(w.isupper() for w in words) or "<" in span or "…" in span:
            continue  # a placeholder (FILE, NAME), not a command
        if words[0] == "hypersparse" and len(words) < 3 and words[1] != "methods":
            continue  # a mention of a subcommand, not a command
        out.append(" ".join(words))
    return list(dict.fromkeys(out))


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert any(c.startswith("hypersparse train") for c in COMMANDS)
    assert any(c.startswith("snakemake --cores all") for c in COMMANDS)
    assert "make demo" in COMMANDS and "make test" in COMMANDS


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=python_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_snakemake_and_make_commands(tmp_path):
    snake = [c for c in COMMANDS if c.startswith("snakemake ")]
    assert len(snake) >= 8
    for cmd in snake:
        args = shlex.split(cmd)
        if "--report" in args:
            continue  # needs a finished grid: test_workflow builds a report after a run
        # as written, from the repository (it finds workflow/Snakefile), results elsewhere
        proc = _run([sys.executable, "-m", *args, "-n", "-q", "rules", "--directory",
                     str(tmp_path)], REPO)
        if "conda" in args and shutil.which("conda") is None:
            # everything up to building the environments works; only conda itself is missing
            assert proc.returncode == 1 and "conda: command not found" in proc.stderr, proc.stderr
            continue
        assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
    for cmd in (c for c in COMMANDS if c.startswith("make ")):
        proc = _run(["make", "-n", *shlex.split(cmd)[1:]], REPO)
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:])


@pytest.mark.slow
def test_hypersparse_commands_in_order(tmp_path, digits_root):
    """The Command line section and the grid commands, in the README's order, in a scratch
    folder holding the prepared digits (as `make demo` leaves them)."""
    shutil.copytree(digits_root, tmp_path / "results" / "data")
    (tmp_path / "config").symlink_to(REPO / "config")
    exe = str(Path(sys.executable).parent / "hypersparse")
    ran = []
    for cmd in (c for c in COMMANDS if c.startswith("hypersparse ")):
        args = shlex.split(cmd)
        if "results/runs" in args and not (tmp_path / "results" / "runs").exists():
            # the Output files section speaks of the grid's run folders: finished runs there
            shutil.copytree(tmp_path / "results" / "cli", tmp_path / "results" / "runs")
        proc = _run([exe, *args[1:]], tmp_path)
        ran.append(args[1])
        if args[1] == "prepare" and "digits" not in args:  # no network in the tests
            assert proc.returncode == 2 and "https://" in proc.stderr, proc.stderr[-2000:]
            continue
        assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
    assert {"train", "sparsify", "aggregate", "plot", "estimate", "status", "export"} <= set(ran)
    assert (tmp_path / "results" / "cli" / "omp.onnx").stat().st_size > 0
    assert (tmp_path / "figures" / "acc.png").stat().st_size > 0


def test_gpu_suite_command_is_safe_without_a_gpu():
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present: the suite would run for minutes")
    for cmd in (c for c in COMMANDS if c.startswith("bash benchmarks/")):
        proc = _run(shlex.split(cmd), REPO, timeout=120)
        assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr


def test_the_plugin_example_is_the_tested_plugin():
    """The README's "Adding a method" code is tests/plugins/init_magnitude.py (which the
    workflow tests run as a plugin)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("# mymethods/init_magnitude.py\n", 1)[1].split("```", 1)[0]
    plugin = (REPO / "tests" / "plugins" / "init_magnitude.py").read_text()
    assert block.strip() in plugin and len(block.strip().splitlines()) >= 15
