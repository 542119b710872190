"""Running the grid: GPUs shared by several runs (faked device counts), cost before starting,
progress during, TensorBoard curves, progress lines in job logs."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from reliability_helpers import python_env

from hypersparse.config import gpu_ids, load_config, validate_config

GRID = """\
datasets: [digits]
image_size: 16
models: [resnet8]
width: 0.25
kappas: [0.9, 0.95, 0.98]
seeds: [0, 1]
device: auto
threads: 1
optim: {lr: 0.05, batch_size: 128}
dense: {epochs: 2, milestones: []}
finetune: {epochs: 1, milestones: []}
methods:
  omp: {}
  snip: {}
resources: {train_mem_mb: 1000, train_runtime_min: 10}
"""


def smk(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--configfile", "grid.yaml", *args]
    return subprocess.run(cmd, cwd=cwd, env=python_env(), capture_output=True, text=True,
                          timeout=600)


def test_gpu_ids_from_the_config_and_the_environment(monkeypatch):
    cfg = yaml.safe_load(GRID)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_ids(validate_config({**cfg, "gpus": 3})) == ["0", "1", "2"]
    assert gpu_ids(validate_config({**cfg, "gpus": 0})) == []
    assert gpu_ids(validate_config({**cfg, "gpus": 3, "device": "cpu"})) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert gpu_ids(validate_config({**cfg, "gpus": 2})) == ["4", "6"]
    auto = gpu_ids(validate_config({**cfg, "gpus": "auto"}))
    assert len(auto) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


@pytest.mark.slow
def test_jobs_spread_over_faked_gpus_with_jobs_per_gpu_each(tmp_path):
    """3 faked GPUs, 2 jobs per GPU: every training job pinned to one device through its own
    resource gpu_<i>, the work balanced, and at most 2 jobs per GPU at once (a real run on CPU:
    the pinned ids do not exist, so the jobs run on the CPU and record what they were given)."""
    (tmp_path / "grid.yaml").write_text(GRID)
    paths = ["results_dir=results", "figures_dir=figures", "data_root=data"]
    dry = smk(tmp_path, "-n", "-p", "--cores", "4", "--config", *paths, "gpus=3",
              "jobs_per_gpu=2")
    assert dry.returncode == 0, dry.stderr[-3000:]
    out = dry.stdout + dry.stderr
    pins = re.findall(r"CUDA_VISIBLE_DEVICES=(\d) python -m hypersparse (?:train|sparsify)", out)
    slots = re.findall(r"gpu_0=(\d), gpu_1=(\d), gpu_2=(\d)", out)
    assert len(pins) == len(slots) == 2 + 2 * 2 * 3  # 2 dense + 12 sparse runs
    for pin, slot in zip(pins, slots, strict=True):
        assert [int(v) for v in slot] == [int(i == int(pin)) for i in range(3)]
    per_gpu = collections.Counter(pins)
    assert set(per_gpu) == {"0", "1", "2"} and max(per_gpu.values()) - min(per_gpu.values()) <= 1

    run = smk(tmp_path, "--cores", "4", "--config", *paths, "gpus=3", "jobs_per_gpu=1")
    assert run.returncode == 0, run.stderr[-3000:]
    spans = collections.defaultdict(list)
    for m in (tmp_path / "results" / "runs").glob("*/*/*/*/*/metrics.json"):
        metrics = json.loads(m.read_text())
        assert metrics["device"] == "cpu"
        spans[metrics["cuda_visible_devices"]].append((metrics["started_at"],
                                                       metrics["finished_at"]))
    assert set(spans) == {"0", "1", "2"} and sum(map(len, spans.values())) == 14
    for device, runs in spans.items():  # one job per GPU: no two runs of a GPU overlapped
        runs.sort()
        assert all(a[1] <= b[0] for a, b in zip(runs, runs[1:], strict=False)), (device, runs)


def test_estimate_counts_jobs_epochs_and_hours(tmp_path, capsys):
    from hypersparse.cli import main

    assert main(["estimate", str(REPO / "config" / "config.yaml"), "--parallel", "8"]) == 0
    out = capsys.readouterr().out
    # per grid: dense + 14 methods at 6 kappas + xrda once; 3 data sets x 2 models x 3 seeds
    assert f"{18 * (1 + 14 * 6 + 1)} training jobs" in out
    lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith(("dense ", "sparse "))}
    # dense: 3 data sets x 2 models x 3 seeds, 160 epochs each
    assert re.search(r"\b18\s+2,880\b", lines["dense"]), lines["dense"]
    # LTH: rounds per kappa (6 kappas) x 155 epochs per round, 18 grids
    from hypersparse.methods.lth import num_rounds

    rounds = sum(num_rounds(k, 0.2) for k in (0.9, 0.95, 0.98, 0.99, 0.995, 0.998))
    assert f"{18 * rounds * 155:,d}" in lines["lth"], lines["lth"]
    assert "xrda" in lines and f"{18 * 600:,d}" in lines["xrda"]
    assert "total" in out and "wall time with 8 runs at once" in out


def test_estimate_refuses_a_grid_the_table_does_not_cover(tmp_path, capsys):
    from hypersparse.cli import main

    table = tmp_path / "t.csv"
    table.write_text("model,dataset,device,seconds_per_epoch,status,source\n")
    assert main(["estimate", str(REPO / "config" / "config.yaml"), "--table", str(table)]) == 2
    err = capsys.readouterr().err
    assert "no seconds per epoch for resnet32 on cifar10" in err and "--table" in err


@pytest.mark.slow
def test_status_counts_states_and_gives_an_eta(tmp_path, capsys, digits_root):
    """Fabricated run folders: finished, failed, interrupted, running (lock held), pending."""
    import fcntl

    from hypersparse.cli import main

    cfg = tmp_path / "grid.yaml"
    cfg.write_text(GRID.replace("device: auto", "device: cpu") +
                   f"results_dir: {tmp_path / 'res'}\ndata_root: {digits_root}\n")
    c = load_config(cfg)
    from hypersparse.config import run_dir

    def folder(method, kappa, seed):
        p = Path(run_dir(c, "digits", "resnet8", method, kappa, seed))
        p.mkdir(parents=True)
        return p

    history = "phase,epoch,phase_epoch,lr,train_loss,train_acc,test_loss,test_acc,sparsity,seconds\n"
    for seed in (0, 1):
        d = folder("dense", 0.0, seed)
        (d / "history.csv").write_text(history + "dense,0,0,0.05,1,1,1,1,0,10.0\n"
                                       "dense,1,1,0.05,1,1,1,1,0,10.0\n")
        (d / "metrics.json").write_text(json.dumps({"status": "ok"}))
    f = folder("omp", 0.9, 0)
    (f / "metrics.json").write_text(json.dumps({"status": "failed"}))
    i = folder("omp", 0.95, 0)
    (i / "ckpt").mkdir()
    r = folder("snip", 0.9, 0)
    (r / "history.csv").write_text(history)
    fd = open(r / ".lock", "w")  # noqa: SIM115
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert main(["status", str(cfg), "--parallel", "2"]) == 0
    finally:
        fd.close()
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("digits_resnet8"))
    finished, failed, running, interrupted, pending, total = map(int, row.split()[1:])
    assert (finished, failed, running, interrupted, pending, total) == (2, 1, 1, 1, 9, 14)
    # 11 runs of 1 epoch left at the dense runs' 10 s per epoch, 2 at a time
    assert "ETA with 2 runs at once: 55s" in out


def test_tensorboard_event_files_are_read_by_tensorboard(make_spec, tmp_path):
    """Every run writes per-epoch scalars (ART adds alpha and a_k); a resumed run's lost
    epochs are dropped by TensorBoard's own reader."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hypersparse.runner import execute

    dense = make_spec("dense", epochs=2, snapshot_epochs=(1,))
    execute(dense, tmp_path / "dense", progress=False)
    ea = EventAccumulator(str(tmp_path / "dense" / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/acc", "test/acc", "lr", "sparsity"} <= tags
    assert [e.step for e in ea.Scalars("test/acc")] == [1, 2]
    art = make_spec("art", kappa=0.9, params={"warmup_epochs": 1, "lambda_init": 1e-3,
                                               "eta": 2.0, "max_art_epochs": 2})
    execute(art, tmp_path / "art", tmp_path / "dense", progress=False)
    ea = EventAccumulator(str(tmp_path / "art" / "tb"))
    ea.Reload()
    assert {"art/alpha", "art/a_k", "art/pruned_train_acc"} <= set(ea.Tags()["scalars"])
    assert all(e.value > 0 for e in ea.Scalars("art/a_k"))


def test_long_epochs_log_progress_lines(make_spec, tmp_path, caplog):
    from hypersparse.engine import Hooks, Phase, Trainer

    t = Trainer(make_spec("dense", epochs=1, batch_size=16), tmp_path / "run", progress=False)
    t.progress_every_s = 0.0  # every batch
    with caplog.at_level("INFO", logger="hypersparse"):
        t.fit(Phase("dense", 2, 0.05), Hooks())
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert lines and re.search(r"dense epoch 0 \(1/2\): batch 1/\d+, \d+ img/s, epoch ETA "
                               r"\d+[smh]", lines[0]), lines[:2]
