"""pyproject.toml and environment.yml pin the same versions, so they cannot drift."""

from __future__ import annotations

import re
import tomllib

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
