"""The Snakemake workflow: lint clean, job counts of the paper grid, an end-to-end tiny run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
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
    once = [m for m in cfg["methods"] if m not in per_kappa]
    art = [m for m in per_kappa if method_entry(m, cfg["methods"][m])[0] == "art"]
    counts = {
        "prepare_data": len(cfg["datasets"]),
        "dense": cells * seeds,
        "sparse": cells * seeds * (sum(len(method_kappas(cfg, m)) for m in per_kappa) + len(once)),
        "table": cells,
        "aggregate": 1,
        "figure": cells * (4 + (4 if art else 0)),
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


@pytest.mark.parametrize("value, flag", [("true", "--compile default"),
                                         ("reduce-overhead", "--compile reduce-overhead"),
                                         ("false", None)])
def test_compile_setting_reaches_training_jobs(tmp_path, value, flag):
    out = snakemake("-n", "-p", "--configfile", str(REPO / "tests" / "data" / "tiny.yaml"),
                    "--config", f"results_dir={tmp_path}/r", f"compile={value}")
    train_lines = [ln for ln in out.stdout.splitlines() if "hypersparse train" in ln
                   or "hypersparse sparsify" in ln]
    assert train_lines
    for line in train_lines:
        assert (flag in line) if flag else ("--compile" not in line)


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
def test_every_method_end_to_end_through_the_workflow(tmp_path):
    """config/demo_all.yaml: each registered method runs and lands in the aggregated table."""
    from hypersparse.methods import METHODS

    config = REPO / "config" / "demo_all.yaml"
    res, figs, data = tmp_path / "results", tmp_path / "figures", tmp_path / "data"
    args = ("--cores", "2", "--configfile", str(config),
            "--config", f"results_dir={res}", f"figures_dir={figs}", f"data_root={data}")
    snakemake(*args, cwd=tmp_path)
    cfg = load_config(config)
    families = {method_entry(m, e)[0] for m, e in cfg["methods"].items()} | {"dense"}
    assert families == set(METHODS), "demo_all.yaml must list every registered method"
    runs = sorted(res.glob("runs/*/*/*/*/*/metrics.json"))
    assert len(runs) == 1 + len(cfg["methods"])
    for path in runs:
        m = json.loads(path.read_text())
        assert m["status"] == "ok", path
        if m["method"] not in ("dense", "xrda"):
            assert m["sparsity_ok"] is True, path
    table = pd.read_csv(res / "tables" / "digits_resnet8.csv")
    assert set(table["method"]) == set(cfg["methods"]) | {"dense"}
    for name in ("acc_vs_sparsity", "acc_vs_flops", "hs_gradient", "exploration", "art_termination",
                 "layer_density", "kernel_patterns", "magnitudes"):
        for ext in ("png", "pdf"):
            assert (figs / f"{name}_digits_resnet8.{ext}").stat().st_size > 0
    # A second run of the same command has nothing to do.
    again = snakemake(*args, "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    # The HTML report holds the tables, every figure with its caption and the job benchmarks.
    report = tmp_path / "report.html"
    snakemake("--report", str(report), *args[2:], cwd=tmp_path)
    html = report.read_text()
    for needle in ("job_benchmarks.csv", "digits_resnet8.csv", "hs_gradient_digits_resnet8.png",
                   "kernel_patterns_digits_resnet8.png", "HyperSparse regularizer"):
        assert needle in html, needle


@pytest.mark.slow
def test_a_plugin_method_reaches_the_tables(tmp_path, monkeypatch):
    """The README's 'Adding a method' example: one module + one config entry, no workflow edit."""
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "plugins"))
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    cfg.update(plugins=["init_magnitude"], methods={"init_magnitude": {"score_power": 1.0}})
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = tmp_path / "results"
    snakemake(f"{res}/tables/digits_resnet8.csv", "--cores", "2", "--configfile", str(path),
              "--config", f"results_dir={res}", f"figures_dir={tmp_path}/f",
              f"data_root={tmp_path}/data", cwd=tmp_path)
    m = json.loads((res / "runs/digits/resnet8/init_magnitude/k0.9/seed0/metrics.json").read_text())
    assert m["status"] == "ok" and m["sparsity_ok"] is True
    table = pd.read_csv(res / "tables" / "digits_resnet8.csv")
    assert "init_magnitude" in set(table["method"])
