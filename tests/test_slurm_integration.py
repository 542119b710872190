"""The workflow through a real local Slurm (profiles/slurm) gives the same tables as a local run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from slurm_cluster import SlurmCluster, slurm_fixture  # noqa: F401  (fixture "slurm")

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
CONFIG = ROOT / "tests" / "data" / "slurm_config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile")]
TRAINING_RULES = ("dense", "sparse")
RULE_DEF = re.compile(r"^(?:local)?rule\s+(\w+)\s*:", re.MULTILINE)
# Columns that legitimately differ between two executions of the same run.
VOLATILE = re.compile(r"time|seconds|duration|date|host|commit|path|dir", re.IGNORECASE)


def _load_profile() -> dict[str, Any]:
    """profiles/slurm/config.yaml as a dict."""
    return yaml.safe_load(PROFILE.read_text())


def _strings(value: Any) -> list[str]:
    """Every string inside a nested YAML value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_profile_is_a_complete_cluster_profile() -> None:
    """The shipped profile selects slurm, has placeholders and one GPU per training rule."""
    prof = _load_profile()
    assert prof["executor"] == "slurm"
    assert prof["jobs"] >= 1 and prof["retries"] >= 1 and prof["latency-wait"] >= 5
    assert prof["default-resources"]["slurm_partition"] == "<partition>"
    assert prof["default-resources"]["slurm_account"] == "<account>"
    for rule in TRAINING_RULES:
        res = prof["set-resources"][rule]
        assert res["gres"] == "gpu:1" and "gpu" not in res  # one GPU per (packed) SLURM job
        assert res["runtime"] >= 60 and res["mem_mb"] >= 4000
        assert prof["set-threads"][rule] >= 1
    # The plugin rejects (or mangles) values wrapped in quotes, e.g. slurm_extra: "'--qos=x'".
    for text in _strings(prof):
        assert not re.match(r"""^\s*['"].*['"]\s*$""", text), f"nested quotes in {text!r}"


def test_profile_rules_exist_in_workflow() -> None:
    """Every rule named in the profile is a rule of the workflow (catches renames).

    Read from the sources (``rule NAME:``) rather than ``snakemake --list-rules``, which
    needs seconds to parse the workflow.
    """
    sources = [
        ROOT / "workflow" / "Snakefile",
        *sorted((ROOT / "workflow" / "rules").glob("*.smk")),
    ]
    rules = {m for src in sources for m in RULE_DEF.findall(src.read_text())}
    assert set(TRAINING_RULES) <= rules
    prof = _load_profile()
    named = set(prof.get("set-resources", {})) | set(prof.get("set-threads", {}))
    assert named <= rules, f"profile names unknown rules: {sorted(named - rules)}"


def local_test_profile(cluster: SlurmCluster, dest: Path, logdir: Path) -> Path:
    """profiles/slurm adapted to the test cluster; returns the folder to pass as profile.

    Site values are replaced (partition, no account, no GPU, tiny memory/runtime/threads so two
    jobs share the 2-core node); the status query uses squeue since there is no accounting
    database (no sacct); failures are not retried so the test fails fast.
    """
    prof = _load_profile()
    defaults = prof["default-resources"]
    defaults.pop("slurm_account", None)  # no accounts here: the plugin submits without -A
    defaults["slurm_partition"] = cluster.partition
    for res in [defaults, *prof.get("set-resources", {}).values()]:
        for key in ("gpu", "gres", "gpu_model", "slurm_extra", "constraint", "qos"):
            res.pop(key, None)
        res["mem_mb"] = min(int(res.get("mem_mb", 1000)), 1000)
        res["runtime"] = min(int(res.get("runtime", 10)), 10)
    prof["set-threads"] = {rule: 1 for rule in prof.get("set-threads", {})}
    # pack two runs per SLURM job, as the shipped profile packs jobs_per_gpu runs per GPU
    prof["group-components"] = ["train_dense=2", "train_runs=2"]
    prof.update(
        {
            "retries": 0,
            "keep-going": False,
            "latency-wait": 5,
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 8,
            "slurm-logdir": str(logdir),
            "slurm-keep-successful-logs": True,
        }
    )
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return dest


def _targets(results: Path) -> list[str]:
    """The table files of the tiny grid (figures are local rules and not compared)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    tables = results / "tables"
    out = [str(tables / "runs.csv")]
    out += [str(tables / f"{d}_{m}.csv") for d in cfg["datasets"] for m in cfg["models"]]
    return out


def _run_workflow(args: list[str], env: dict[str, str], timeout: float) -> None:
    """Run snakemake (targets first: --config takes all later words).

    On timeout snakemake gets SIGTERM first, so it cancels its Slurm jobs and drops its locks.
    """
    proc = subprocess.Popen(
        [*SNAKEMAKE, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"snakemake timed out after {timeout} s:\n{out[-6000:]}")
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{out[-6000:]}"


def _metrics(results: Path) -> dict[str, dict[str, Any]]:
    """Run folder (relative) -> metrics.json of every run under results/runs."""
    runs = results / "runs"
    return {
        str(p.parent.relative_to(runs)): json.loads(p.read_text())
        for p in sorted(runs.rglob("metrics.json"))
    }


def _stable(table: pd.DataFrame) -> pd.DataFrame:
    """A table without the columns that differ between executions (times, hosts, paths)."""
    return table.drop(columns=[c for c in table.columns if VOLATILE.search(str(c))])


@pytest.mark.slow
@pytest.mark.slurm
def test_workflow_on_slurm_matches_local_run(slurm: SlurmCluster, tmp_path: Path) -> None:
    """Tiny grid via sbatch (profiles/slurm) == the same grid run locally with --cores 2."""
    on_slurm, local, data = tmp_path / "slurm", tmp_path / "local", tmp_path / "data"
    profile = local_test_profile(slurm, tmp_path / "profile", tmp_path / "slurm_logs")
    # Jobs inherit this environment (sbatch --export=ALL): the venv's python and CLI first.
    env = slurm.env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")

    def config(out: Path) -> list[str]:
        # Own working dir per run: its own .snakemake (locks, metadata) away from the repo's.
        return [
            "--directory",
            str(out),
            "--configfile",
            str(CONFIG),
            "--config",
            f"results_dir={out / 'results'}",
            f"figures_dir={out / 'figures'}",
            f"data_root={data}",
        ]

    start = time.monotonic()
    _run_workflow(
        [*_targets(on_slurm / "results"), "--workflow-profile", str(profile), *config(on_slurm)],
        env,
        timeout=480,
    )
    slurm_s = time.monotonic() - start
    print(f"slurm run: {slurm_s:.1f} s")

    # Training went through Slurm, the two sparse runs packed into one SLURM job (a group
    # job of train_runs), as the profile's group-components ask.
    logs = sorted((tmp_path / "slurm_logs").rglob("*.log"))
    tops = {p.relative_to(tmp_path / "slurm_logs").parts[0] for p in logs}
    assert any(t.startswith("group_") for t in tops) and "rule_sparse" not in tops, tops
    jobs = slurm.run("squeue", "-h", "--states=all", "-o", "%i").stdout.split()
    assert len(jobs) == 2, jobs  # the dense job and one job for both sparse runs
    done = slurm.run("squeue", "-h", "--states=all", "-o", "%T").stdout.split()
    assert done and set(done) == {"COMPLETED"}, done

    _run_workflow(
        [*_targets(local / "results"), "--cores", "2", *config(local)],  # default profile
        env,
        timeout=480,
    )

    slurm_runs, local_runs = _metrics(on_slurm / "results"), _metrics(local / "results")
    assert slurm_runs.keys() == local_runs.keys() and len(slurm_runs) >= 2
    for run, m in slurm_runs.items():
        assert m["status"] == "ok" and m["final_test_acc"] > 30, (run, m["final_test_acc"])
        for key in ("final_test_acc", "best_test_acc", "final_train_acc", "num_zero", "sparsity"):
            assert m[key] == local_runs[run][key], (run, key, m[key], local_runs[run][key])
    for s_table, l_table in zip(
        _targets(on_slurm / "results"), _targets(local / "results"), strict=True
    ):
        pd.testing.assert_frame_equal(
            _stable(pd.read_csv(s_table)), _stable(pd.read_csv(l_table)), obj=Path(s_table).name
        )
