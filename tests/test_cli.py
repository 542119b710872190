"""The CLI: help for every subcommand, one clear error line for bad input, no partial output."""

from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import hypersparse_cmd

SUBCOMMANDS = ["prepare", "train", "sparsify", "validate-config", "methods", "aggregate", "plot",
               "export", "estimate", "status"]


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*hypersparse_cmd(), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_help_lists_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0
    for sub in SUBCOMMANDS:
        assert sub in out.stdout


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_each_subcommand_has_help(sub):
    out = run_cli(sub, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout


def test_methods_lists_registered_methods():
    out = run_cli("methods")
    assert out.returncode == 0 and "omp" in out.stdout and "dense" in out.stdout


def test_init_checkpoint_of_another_model_is_refused(digits_root, tmp_path):
    from hypersparse.models import build_model

    other = tmp_path / "other.pt"
    torch.save(build_model("resnet8", 100, in_channels=1, width=0.25).state_dict(), other)
    out_dir = tmp_path / "run"
    out = run_cli("sparsify", "--method", "omp", "--dataset", "digits", "--model", "resnet8",
                  "--width", "0.25", "--image-size", "16", "--data-root", str(digits_root),
                  "--kappa", "0.9", "--init", str(other), "--out", str(out_dir), "--device", "cpu")
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert err[-1].startswith("hypersparse: error: checkpoint") and "shape mismatch" in err[-1]
    assert "another model or class count" in err[-1]
    assert not out_dir.exists()


def test_missing_data_is_refused_with_the_fix(tmp_path):
    out_dir = tmp_path / "run"
    out = run_cli("train", "--dataset", "digits", "--model", "resnet8", "--data-root",
                  str(tmp_path / "nodata"), "--out", str(out_dir), "--epochs", "1")
    assert out.returncode == 2
    assert "hypersparse prepare --dataset digits" in out.stderr
    assert not out_dir.exists()


def test_version_and_defaults_in_help():
    from hypersparse import __version__

    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"hypersparse {__version__}"
    helptext = run_cli("train", "--help").stdout
    assert "(default:" in helptext


def test_bad_arguments_are_one_line_naming_the_fix(tmp_path):
    cases = [
        (("train", "--dataset", "mnist"), "unknown data set 'mnist'"),
        (("train", "--dataset", "digits", "--model", "resnet9"), "resnet"),
        (("plot", "acc_vs_sparsitty"), "invalid choice"),
        (("train", "--epochs", "0"), "must be at least 1"),
    ]
    for args, needle in cases:
        out = run_cli(*args, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert needle in lines[0] and "--help" in lines[0], lines[0]
    assert not any(tmp_path.iterdir())


def test_verbose_flag_after_a_subcommand():
    out = run_cli("methods", "-v")
    assert out.returncode == 0 and "omp" in out.stdout


def test_figure_choices_are_the_registered_figures():
    from hypersparse.analysis.figures import FIGURES
    from hypersparse.cli import FIGURE_NAMES

    assert set(FIGURE_NAMES) == set(FIGURES)
