"""Aggregation and table writing on hand-made run folders with numbers checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from runfolders import make_run, make_unfinished

from hypersparse.analysis import collect_runs, write_replication, write_table, write_tables
from hypersparse.analysis.tables import aggregate, read_paper_targets, wide_cells

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small grid whose aggregates are easy to compute by hand."""
    root = tmp_path_factory.mktemp("tables") / "runs"
    for seed, acc in enumerate((94.0, 95.0, 96.0)):  # mean 95, std(ddof=1) 1
        make_run(
            root, method="dense", kappa=0.0, seed=seed, final_test_acc=acc, best_test_acc=acc + 1
        )
    make_run(root, method="art_hs", kappa=0.9, seed=0, final_test_acc=90.0, best_test_acc=91.5)
    make_run(root, method="art_hs", kappa=0.9, seed=1, final_test_acc=92.0, best_test_acc=93.5)
    make_run(root, method="omp", kappa=0.9, seed=0, final_test_acc=91.5, best_test_acc=92.0)
    make_run(root, method="omp", kappa=0.98, seed=0, status="failed")
    make_run(root, method="omp", kappa=0.98, seed=1, final_test_acc=80.0, best_test_acc=81.0)
    make_run(root, method="snip", kappa=0.9, seed=0, status="failed")
    make_run(root, method="snip", kappa=0.9, seed=1, status="failed")
    make_run(root, method="art_hs", kappa=0.98, seed=0, final_test_acc=85.0, sparsity_miss=3)
    make_unfinished(root, method="omp", kappa=0.5, seed=0)
    return root


def _cell(agg: pd.DataFrame, method: str, kappa: float) -> pd.Series:
    row = agg[(agg["method"] == method) & (agg["kappa"] == kappa)]
    assert len(row) == 1
    return row.iloc[0]


def test_collect_runs_rows_and_sparsity_check(runs_root: Path) -> None:
    df = collect_runs(runs_root)
    assert len(df) == 11  # the unfinished folder (no metrics.json) is skipped
    assert not ((df["method"] == "omp") & (df["kappa"] == 0.5)).any()
    assert (df["status"] == "failed").sum() == 3
    failed = df[df["status"] == "failed"]
    assert failed["final_test_acc"].isna().all() and failed["error"].notna().all()
    miss = df[(df["method"] == "art_hs") & (df["kappa"] == 0.98)].iloc[0]
    assert int(miss["num_zero"]) == int(miss["target_zeros"]) - 3
    assert miss["sparsity_ok"] == False  # noqa: E712
    ok = df[(df["method"] == "art_hs") & (df["kappa"] == 0.9)]
    assert (ok["num_zero"] == ok["target_zeros"]).all() and ok["sparsity_ok"].all()


def test_collect_runs_trusts_counts_over_flag(tmp_path: Path) -> None:
    d = make_run(tmp_path, method="omp", kappa=0.9, final_test_acc=90.0)
    m = json.loads((d / "metrics.json").read_text())
    m["num_zero"] -= 1  # the flag still says True, the counts disagree
    (d / "metrics.json").write_text(json.dumps(m))
    assert collect_runs(tmp_path)["sparsity_ok"].iloc[0] == False  # noqa: E712


def test_unreadable_metrics_is_a_failed_row(tmp_path: Path) -> None:
    d = make_run(tmp_path, method="omp", kappa=0.9)
    (d / "metrics.json").write_text("{not json")
    row = collect_runs(tmp_path).iloc[0]
    assert row["status"] == "failed" and "unreadable" in row["error"]
    assert (row["method"], row["kappa"], row["seed"]) == ("omp", 0.9, 0)  # from the path


def test_aggregate_arithmetic(runs_root: Path) -> None:
    agg = aggregate(collect_runs(runs_root))
    dense = _cell(agg, "dense", 0.0)
    assert dense["n_seeds"] == 3 and dense["seeds"] == "0,1,2"
    assert dense["final_test_acc_mean"] == pytest.approx(95.0)
    assert dense["final_test_acc_std"] == pytest.approx(1.0)  # sample std, ddof=1
    art = _cell(agg, "art_hs", 0.9)
    assert art["final_test_acc_mean"] == pytest.approx(91.0)
    assert art["final_test_acc_std"] == pytest.approx(math.sqrt(2.0))
    assert art["best_test_acc_mean"] == pytest.approx(92.5)
    single = _cell(agg, "omp", 0.9)
    assert single["n_seeds"] == 1 and math.isnan(single["final_test_acc_std"])
    partial = _cell(agg, "omp", 0.98)
    assert (partial["n_seeds"], partial["n_failed"], partial["final_test_acc_mean"]) == (1, 1, 80.0)
    dead = _cell(agg, "snip", 0.9)
    assert dead["n_seeds"] == 0 and dead["n_failed"] == 2
    assert _cell(agg, "art_hs", 0.98)["sparsity_ok_all"] == False  # noqa: E712


def test_markdown_cells(runs_root: Path, tmp_path: Path) -> None:
    agg = aggregate(collect_runs(runs_root))
    methods, kappas, cells, bold = wide_cells(agg, "final_test_acc")
    assert methods == ["dense", "art_hs", "omp", "snip"] and kappas == [0.0, 0.9, 0.98]
    c = {(m, k): cells[i][j] for i, m in enumerate(methods) for j, k in enumerate(kappas)}
    assert c[("dense", 0.0)] == "95.0 ± 1.0"
    # § : these fabricated 90%+ models lost their whole classifier (disconnected_layers)
    assert c[("art_hs", 0.9)] == "91.0 ± 1.4§"
    assert c[("omp", 0.9)] == "91.5§"  # one seed: no ±
    assert c[("omp", 0.98)] == "80.0‡§"  # one of two seeds failed
    assert c[("snip", 0.9)] == "failed"
    assert c[("art_hs", 0.98)] == "85.0†§"  # missed its sparsity target
    assert c[("snip", 0.98)] == "" and c[("dense", 0.9)] == ""  # not run
    paths = write_table(runs_root, tmp_path, "digits", "resnet8")
    md = paths[1].read_text()
    assert "selected on the test set" in md and "| **91.5§** |" in md
    assert "ddof=1" in md


def test_latex_bold_best_in_column(runs_root: Path, tmp_path: Path) -> None:
    tex = write_table(runs_root, tmp_path, "digits", "resnet8")[2].read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\midrule" in tex
    final = tex.split(r"\end{table}")[0]
    assert r"\textbf{91.5$^{\S}$}" in final  # omp beats art_hs (91.0) at 90%
    assert r"\textbf{91.0" not in final
    # 98%: art_hs missed its target (ineligible), omp alone -> nothing bold; marks in math
    assert r"85.0$^{\dagger\S}$" in final and r"80.0$^{\ddagger\S}$" in final
    assert r"\textbf{80.0" not in final and r"\textbf{85.0" not in final
    assert r"$^\dagger$ at least one run" in final and r"mean $\pm$ sample" in final
    assert final.count("$") % 2 == 0  # every math span is closed
    assert r"ART + HS" in final and r"95.0 $\pm$ 1.0" in final
    assert tex.count(r"\begin{table}") == 2  # final-epoch and best-epoch variants
    best = tex.split(r"\end{table}")[1]
    assert "selected on the test set" in best and r"\textbf{92.5" in best


def test_aggregated_csv_and_runs_csv(runs_root: Path, tmp_path: Path) -> None:
    targets = tmp_path / "targets.csv"
    targets.write_text("dataset,model,method,kappa,test_acc,metric\n")
    paths = write_tables(runs_root, tmp_path / "out", paper_targets=targets)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "runs.csv",
            "digits_resnet8.csv",
            "digits_resnet8.md",
            "digits_resnet8.tex",
            "replication.csv",
            "replication.md",
        ]
    )
    assert all(p.stat().st_size > 0 for p in paths)
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 11
    agg = pd.read_csv(tmp_path / "out" / "digits_resnet8.csv")
    assert {
        "n_seeds",
        "n_failed",
        "final_test_acc_mean",
        "final_test_acc_std",
        "best_test_acc_mean",
        "best_test_acc_std",
        "sparsity_ok_all",
    } <= set(agg.columns)
    assert write_tables(runs_root, tmp_path / "none", paper_targets=targets, datasets=["cifar10"])[
        1:
    ] == [tmp_path / "none" / n for n in ("replication.csv", "replication.md")]


def test_table_for_pair_without_runs_does_not_crash(runs_root: Path, tmp_path: Path) -> None:
    paths = write_table(runs_root, tmp_path, "cifar10", "vgg19")
    assert all(p.is_file() for p in paths)
    assert "No finished runs" in paths[1].read_text()


def test_replication_differences(runs_root: Path, tmp_path: Path) -> None:
    targets = tmp_path / "targets.csv"
    targets.write_text(
        "dataset,model,method,kappa,test_acc,metric\n"
        "digits,resnet8,art_hs,0.9,93.0,best_test_acc\n"
        "digits,resnet8,dense,0,95.5,best_test_acc\n"
        "digits,resnet8,snip,0.9,80.0,best_test_acc\n"
        "cifar10,resnet32,art_hs,0.98,92.69,best_test_acc\n"
    )
    csv, md = write_replication(runs_root, tmp_path, targets)
    rep = pd.read_csv(csv)
    art = rep.iloc[0]
    assert art["ours_mean"] == pytest.approx(92.5) and art["diff"] == pytest.approx(-0.5)
    assert art["n_seeds"] == 2 and art["ours_final_mean"] == pytest.approx(91.0)
    assert rep.iloc[1]["diff"] == pytest.approx(96.0 - 95.5)
    assert rep.iloc[2]["n_seeds"] == 0 and rep.iloc[2]["n_failed"] == 2
    missing = rep.iloc[3]
    assert missing["n_seeds"] == 0 and math.isnan(missing["ours_mean"])
    text = md.read_text()
    assert (
        "| digits | resnet8 | ART + HS | 90% | 93.00 | 92.50 ± 1.41 | -0.50 | 2 | 91.00 ± 1.41 |"
        in text
    )
    assert "| cifar10 | resnet32 | ART + HS | 98% | 92.69 |  |  |  |  |" in text
    assert "| failed |" in text


def test_paper_targets_match_published_table() -> None:
    t = read_paper_targets(REPO / "config" / "paper_targets.csv")
    assert len(t) == 24 and set(t["metric"]) == {"best_test_acc"}
    assert set(t["kappa"]) == {0.0, 0.9, 0.98, 0.995}
    assert set(t.loc[t["kappa"] == 0, "method"]) == {"dense"}
    assert set(t.loc[t["kappa"] > 0, "method"]) == {"art_hs"}

    def val(d: str, m: str, k: float) -> float:
        return float(
            t[(t["dataset"] == d) & (t["model"] == m) & (t["kappa"] == k)]["test_acc"].iloc[0]
        )

    assert val("cifar10", "resnet32", 0.995) == 89.35
    assert val("cifar100", "vgg19", 0.9) == 73.23
    assert val("tinyimagenet", "resnet32", 0.0) == 62.87


@pytest.mark.slow
def test_honest_tables_conflicts_emergent_flops(make_spec, tmp_path: Path) -> None:
    """Two seed-0 runs of different settings under one label are a conflict, not two seeds;
    xRDA's emergent sparsity gets its own table; FLOPs columns from metrics.json."""
    import dataclasses

    from hypersparse.runner import execute
    from hypersparse.spec import ScheduleSpec

    runs = tmp_path / "runs"
    execute(make_spec("dense", epochs=1), runs / "a", progress=False)
    longer = dataclasses.replace(make_spec("dense", epochs=1), dense=ScheduleSpec(2, (), 0.1))
    execute(longer, runs / "b", progress=False)
    execute(make_spec("xrda", params={"epochs": 1, "lam": 1e-4}), runs / "c", progress=False)
    df = collect_runs(runs)
    assert df["spec_key"].nunique() == 3 and df["train_flops_ratio"].notna().all()
    agg = aggregate(df)
    dense = _cell(agg, "dense", 0.0)
    assert dense["n_specs"] == 2 and math.isnan(dense["final_test_acc_mean"])  # not mixed
    methods, _, cells, _ = wide_cells(agg, "final_test_acc")
    assert methods == ["dense"] and cells[0][0] == "conflict (2 specs)"  # xrda not at 0%
    md = write_table(runs, tmp_path / "t", "digits", "resnet8", flops=True)[1].read_text()
    assert "## Emergent sparsity" in md and "| xRDA |" in md
    assert "## Conflicting runs" in md and str(runs / "a") in md and str(runs / "b") in md
    assert "Training FLOPs of the whole run" in md
