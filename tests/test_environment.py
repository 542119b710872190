"""pyproject.toml and environment.yml pin the same versions, so they cannot drift."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from conftest import REPO

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def _pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        m = PIN.match(line.strip())
        assert m, f"not an exact pin: {line!r}"
        out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    py = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == py
    assert "python=3.11" in env["dependencies"] and "pip" in env["dependencies"]


def test_installed_versions_are_the_pinned_ones():
    import importlib.metadata as md

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for name, version in _pins(project["dependencies"]).items():
        assert md.version(name) == version, name


def test_torch_and_torchvision_import_on_cpu():
    import torch
    import torchvision

    assert torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5).numel() == 1


def _rule_blocks() -> dict[str, str]:
    """Every rule of the workflow: name -> its text (from `rule NAME:` to the next rule)."""
    blocks = {}
    for path in sorted((REPO / "workflow").rglob("*.smk")) + [REPO / "workflow" / "Snakefile"]:
        parts = re.split(r"^(?:local)?rule (\w+):", path.read_text(), flags=re.M)
        blocks.update(dict(zip(parts[1::2], parts[2::2], strict=True)))
    return blocks


def test_every_job_rule_has_the_conda_environment_and_runs_the_checkout():
    jobs = {name: text for name, text in _rule_blocks().items() if "shell:" in text}
    assert {"dense", "sparse", "table", "figure", "aggregate", "prepare_data"} <= set(jobs)
    for name, text in jobs.items():
        assert 'conda:\n        "../../environment.yml"' in text, name
        shell = text[text.index("shell:"):]
        if "hypersparse" in shell:  # never the console script: conda envs lack the package
            assert "python -m hypersparse" in shell, name
            assert not re.search(r"(?<!-m )\bhypersparse (?!-)", shell.split("\n\n")[0]), name


def test_jobs_run_from_the_checkout_without_the_package_installed(tmp_path):
    """What --sdm conda gives a job: the dependencies but not hypersparse; the workflow puts
    the checkout's src/ on PYTHONPATH (common.smk). PYTHONPATH entries skip .pth files, so the
    venv's editable install is invisible here."""
    import os
    import subprocess
    import sys

    site = next(p for p in sys.path if p.endswith("site-packages") and (Path(p) / "torch").is_dir())
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": site}
    base = sys._base_executable
    alone = subprocess.run([base, "-c", "import hypersparse"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode != 0 and "No module named 'hypersparse'" in alone.stderr
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), site])
    out = subprocess.run([base, "-m", "hypersparse", "methods"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "omp" in out.stdout, out.stderr
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'SRC = str(Path(workflow.basedir).parent / "src")' in common
    assert "os.environ.update(PYTHONPATH=" in common


def test_environment_file_installs_every_runtime_dependency():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = _pins(pip)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        assert dep.split("==")[0].lower().replace("_", "-") in pinned, dep
    assert "hypersparse" not in pinned  # the package comes from the checkout (PYTHONPATH)
