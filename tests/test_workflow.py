"""The Snakemake workflow: lint clean, job counts of the paper grid, an end-to-end tiny run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import REPO
from workflow_utils import job_counts, snakemake

from hypersparse.config import load_config, method_entry, method_kappas, sparse_methods


def test_lint_reports_nothing():
    out = snakemake("--lint", "--configfile", str(REPO / "config" / "demo.yaml"))
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr


def expected_counts(cfg: dict) -> dict[str, int]:
    """Jobs per rule derived from the grid size alone."""
    cells = len(cfg["datasets"]) * len(cfg["models"])
    seeds = len(cfg["seeds"])
    per_kappa = sparse_methods(cfg)
    art = [m for m in per_kappa if method_entry(m, cfg["methods"][m])[0] == "art"]
    once = [m for m in cfg["methods"] if m not in per_kappa]
    n_kappas = {m: len(method_kappas(cfg, m)) for m in per_kappa}
    counts = {
        "prepare_data": len(cfg["datasets"]),
        "dense": cells * seeds,
        "sparse": cells * seeds * (sum(n_kappas[m] for m in per_kappa if m not in art) + len(once)),
        "art": cells * seeds * sum(n_kappas[m] for m in art),
        "table": cells,
        "aggregate": 1,
        "figure": cells * (3 + (4 if art else 0)),
        "all": 1,
    }
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("config", ["config.yaml", "demo.yaml"])
def test_dry_run_job_counts_match_grid(config, tmp_path):
    cfg = load_config(REPO / "config" / config)
    out = snakemake("-n", "--configfile", str(REPO / "config" / config),
                    "--config", f"results_dir={tmp_path}/results", f"figures_dir={tmp_path}/figs",
                    f"data_root={tmp_path}/data", "--quiet", "rules")
    assert job_counts(out.stdout) == expected_counts(cfg)


def test_config_overrides_select_a_partial_grid(tmp_path):
    out = snakemake("-n", "--config", "datasets=[cifar10]", "models=[resnet32]",
                    f"results_dir={tmp_path}/results", f"data_root={tmp_path}/data",
                    "--quiet", "rules")
    counts = job_counts(out.stdout)
    assert counts["prepare_data"] == 1 and counts["table"] == 1


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "tests" / "data" / "tiny.yaml").read_text().replace(
        "kappas: [0.9]", "kappas: [1.0]"))
    out = snakemake("-n", "--configfile", str(bad), "--config", f"results_dir={tmp_path}/r",
                    check=False)
    assert out.returncode != 0
    assert "kappas[0]" in out.stdout + out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_tiny_workflow_end_to_end(tmp_path):
    res, figs, data = tmp_path / "results", tmp_path / "figures", tmp_path / "data"
    args = ("--cores", "2", "--configfile", str(REPO / "tests" / "data" / "tiny.yaml"),
            "--config", f"results_dir={res}", f"figures_dir={figs}", f"data_root={data}")
    snakemake(*args, cwd=tmp_path)
    cfg = load_config(REPO / "tests" / "data" / "tiny.yaml")
    runs = sorted(res.glob("runs/*/*/*/*/*/metrics.json"))
    assert len(runs) == 1 + len(cfg["methods"]) * len(cfg["kappas"])
    for path in runs:
        m = json.loads(path.read_text())
        assert m["status"] == "ok", path
        if m["method"] != "dense":
            assert m["sparsity_ok"] is True
    table = pd.read_csv(res / "tables" / "digits_resnet8.csv")
    assert not table.empty
    assert (figs / "acc_vs_sparsity_digits_resnet8.png").stat().st_size > 0
    assert (figs / "acc_vs_sparsity_digits_resnet8.pdf").stat().st_size > 0
    # A second run of the same command has nothing to do.
    again = snakemake(*args, "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
