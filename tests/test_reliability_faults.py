"""Faults survived: kill -9 of a training job and of the whole workflow, corrupt checkpoints,
writers killed mid-write, diverging runs. No finished result may be lost or changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from reliability_helpers import (
    REPO,
    cli_args,
    error_lines,
    history_rows,
    metrics,
    python_env,
    run_cli,
    snapshot,
    tiny_spec,
    wait_for,
)

from hypersparse import io as hio
from hypersparse.engine import Trainer
from hypersparse.io import CheckpointError, atomic_torch_save, atomic_write_json, safe_torch_load
from hypersparse.runner import execute
from hypersparse.spec import RunSpec


def assert_same_result(a: Path, b: Path) -> None:
    """Two run folders hold the same final model, metrics and per-epoch history."""
    ma, mb = metrics(a), metrics(b)
    for key in ("status", "final_test_acc", "best_test_acc", "final_train_acc", "epochs"):
        assert ma[key] == mb[key], key
    sa, sb = safe_torch_load(a / "model.pt"), safe_torch_load(b / "model.pt")
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    cut = [[r.rsplit(",", 1)[0] for r in (d / "history.csv").read_text().splitlines()]
           for d in (a, b)]  # all columns but the wall time
    assert cut[0] == cut[1]


def no_temp_files(folder: Path) -> list[Path]:
    """Temp files of interrupted atomic writes under ``folder``."""
    return sorted(Path(folder).rglob(hio.TEMP_GLOB))


# --------------------------------------------------------------------- 1. kill -9 a training job
@pytest.mark.slow
def test_kill9_mid_epoch_resumes_to_the_uninterrupted_result(digits_root, tmp_path):
    spec = json.dumps(tiny_spec(digits_root, epochs=4, batch_size=32))
    args = ["train", "--spec-json", spec, "--threads", "1"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref_proc = subprocess.Popen(cli_args(*args, "--out", str(ref)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    with open(tmp_path / "victim.log", "w") as log:
        victim = subprocess.Popen(cli_args(*args, "--out", str(run)), stdout=log, stderr=log)
        wait_for(lambda: history_rows(run) >= 1 and (run / "ckpt" / "last.pt").exists(), victim,
                 what="the first epoch's checkpoint")
        os.kill(victim.pid, signal.SIGKILL)  # now inside the next epoch
        assert victim.wait() == -signal.SIGKILL
    assert not (run / "metrics.json").exists()
    killed_at = history_rows(run)
    assert 1 <= killed_at < 4

    again = run_cli(*args, "--out", str(run))
    assert again.returncode == 0, again.stderr
    resumed = [ln for ln in again.stderr.splitlines() if "resuming from" in ln]
    assert resumed and "last.pt" in resumed[0], again.stderr
    assert ref_proc.wait(timeout=300) == 0
    assert_same_result(ref, run)
    assert metrics(run)["epochs_trained"] == 4
    assert not (run / "ckpt").exists() and not no_temp_files(run)


# ------------------------------------------------------------- 2. kill the whole Snakemake run
# One grid for points 2 and 5: two sparse runs that can be cut mid-training, and the ART entry
# art_hs with lambda_init = 1e30, whose regulariser makes it diverge (the rest goes on).
GRID = """\
datasets: [digits]
image_size: 16
models: [resnet8]
width: 0.25
kappas: [0.9, 0.98]
seeds: [0]
device: cpu
threads: 1
optim: {lr: 0.05, batch_size: 64}
dense: {epochs: 2, milestones: []}
finetune: {epochs: 4, milestones: []}
methods:
  omp: {}
  art_hs: {family: art, lambda_init: 1.0e+30, warmup_epochs: 1, max_art_epochs: 2}
resources: {train_mem_mb: 1000, train_runtime_min: 10}
"""


def registered_outputs(log: str) -> set[str]:
    """Output files of the jobs a Snakemake log reports as finished."""
    outputs = dict(re.findall(r"\n\s+output: ([^\n]*)\n(?:\s+\w+: [^\n]*\n)*?\s+jobid: (\d+)",
                              log))
    by_id = {jid: out for out, jid in outputs.items()}
    done = set(re.findall(r"Finished jobid: (\d+)", log))
    return {f for jid in done for f in by_id.get(jid, "").split(", ") if f}


def _group_alive(pgid: int) -> bool:
    out = subprocess.run(["ps", "-eo", "pgid="], capture_output=True, text=True).stdout
    return str(pgid) in out.split()


@pytest.fixture(scope="module")
def killed_grid(tmp_path_factory):
    """The grid killed (SIGKILL to its process group) mid-way, then rerun to the end.

    Returns (results dir, finished run folders at the kill, runs in progress at the kill,
    snapshot of the finished folders and the data cache before the rerun, {run folder:
    metrics} of runs finished but not yet registered by Snakemake at the kill, rerun process).
    """
    tmp = tmp_path_factory.mktemp("grid")
    (tmp / "grid.yaml").write_text(GRID)
    res = tmp / "results"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--workflow-profile", str(REPO / "workflow" / "profiles" / "default"), "--cores", "2",
           "--configfile", str(tmp / "grid.yaml"), "--config", f"results_dir={res}",
           f"figures_dir={tmp / 'figures'}", f"data_root={tmp / 'data'}"]
    runs = res / "runs" / "digits" / "resnet8"
    omp = [runs / "omp" / k / "seed0" for k in ("k0.9", "k0.98")]
    with open(tmp / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=python_env(), stdout=log, stderr=log,
                                start_new_session=True)
        wait_for(lambda: (runs / "dense" / "k0" / "seed0" / "metrics.json").exists()
                 and any((r / "ckpt" / "last.pt").exists() for r in omp), proc, timeout=600,
                 what="a finished dense run and a sparse run in progress")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_for(lambda: not _group_alive(proc.pid), timeout=30, what="the job processes to die")
    done = [m.parent for m in res.glob("runs/*/*/*/*/*/metrics.json")]
    # A job that wrote metrics.json just before the kill but whose end Snakemake had not yet
    # registered counts as incomplete for Snakemake: it deletes its outputs and reruns it.
    registered = registered_outputs((tmp / "first.log").read_text())
    finished = [r for r in done if str(r / "metrics.json") in registered]
    unregistered = {r: metrics(r) for r in done if r not in finished}
    in_progress = [r for r in omp if (r / "ckpt" / "last.pt").exists()
                   and not (r / "metrics.json").exists()]
    before = snapshot(*finished, tmp / "data")
    # A killed Snakemake leaves its directory lock behind (it cannot tell a dead holder from a
    # live one); `--unlock` is Snakemake's documented way out, then the same command again.
    unlock = subprocess.run([*cmd, "--unlock"], cwd=tmp, env=python_env(), capture_output=True,
                            text=True, timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    again = subprocess.run(cmd, cwd=tmp, env=python_env(), capture_output=True, text=True,
                           timeout=900)
    return res, finished, in_progress, before, unregistered, again


ART_FIGURES = ("hs_gradient", "exploration", "art_termination", "magnitudes")


def failed_jobs(out: str) -> list[str]:
    """'rule' or 'figure:<name>' of every job Snakemake reports as failed."""
    names = []
    for block in out.split("Error in rule ")[1:]:
        rule = block.split(":", 1)[0]
        m = re.search(r"output: \S*/figures/(\w+?)_digits_resnet8\.png", block)
        names.append(f"figure:{m.group(1)}" if rule == "figure" and m else rule)
    return names


@pytest.mark.slow
def test_killed_workflow_resumes_without_retraining_finished_runs(killed_grid):
    res, finished, in_progress, before, unregistered, again = killed_grid
    assert finished and in_progress
    out = again.stdout + again.stderr
    # Every job succeeds: the ART trace figures of an all-diverged ART grid are placeholders.
    assert not failed_jobs(out), out[-4000:]
    data = res.parent / "data"
    assert snapshot(*finished, data) == before, "a finished run was touched"
    for r, m in unregistered.items():  # recomputed: the same numbers again
        again_m = metrics(r)
        for key in ("status", "error", "final_test_acc", "best_test_acc", "num_zero"):
            assert again_m.get(key) == m.get(key), (r, key)
    for r in in_progress:
        log = res / "logs" / f"{r.relative_to(res / 'runs')}.log"
        assert "resuming from" in log.read_text(), log.read_text()
    runs = res / "runs" / "digits" / "resnet8"
    for r in [runs / "dense" / "k0" / "seed0", *(runs / "omp").glob("k*/seed0")]:
        assert metrics(r)["status"] == "ok" and not no_temp_files(r)
        assert not (r / "ckpt").exists()
    for name in ("runs.csv", "replication.md", "digits_resnet8.csv", "digits_resnet8.md"):
        assert (res / "tables" / name).stat().st_size > 0
    for fig in ("acc_vs_sparsity", "layer_density", "kernel_patterns"):
        assert (res.parent / "figures" / f"{fig}_digits_resnet8.png").stat().st_size > 0


# ------------------------------------------------------------------ 5. (workflow) a diverging cell
@pytest.mark.slow
def test_diverging_cell_is_failed_and_the_grid_goes_on(killed_grid):
    res = killed_grid[0]
    for kappa in ("k0.9", "k0.98"):
        m = metrics(res / "runs" / "digits" / "resnet8" / "art_hs" / kappa / "seed0")
        assert m["status"] == "failed" and "final_test_acc" not in m
        assert "diverged" in m["error"] and "epoch 1" in m["error"]
        assert "lambda_init" in m["error"]
    table = pd.read_csv(res / "tables" / "digits_resnet8.csv")
    cells = table[table["method"] == "art_hs"]
    assert len(cells) == 2 and (cells["n_failed"] == 1).all() and (cells["n_seeds"] == 0).all()
    assert cells["final_test_acc_mean"].isna().all()
    ok = table[table["method"] == "omp"]
    assert len(ok) == 2 and ok["final_test_acc_mean"].notna().all()
    md = (res / "tables" / "digits_resnet8.md").read_text()
    art_rows = [ln for ln in md.splitlines() if ln.startswith("|") and "failed" in ln]
    assert art_rows and all(ln.count("failed") == 2 for ln in art_rows), md


@pytest.mark.slow
def test_workflow_exits_zero_with_a_diverged_art_grid(killed_grid):
    again = killed_grid[-1]
    assert again.returncode == 0, failed_jobs(again.stdout + again.stderr)


# ---------------------------------------------------- 3. truncated / corrupt checkpoints
class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, no except clause catches it."""


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, digits_root):
    """(spec, uninterrupted run folder, folder of a run killed after its 2nd of 3 epochs)."""
    base = tmp_path_factory.mktemp("ckpt")
    spec = RunSpec.from_dict(tiny_spec(digits_root, epochs=3, batch_size=128))
    execute(spec, base / "ref", progress=False)
    calls = {"n": 0}
    orig = Trainer._save_checkpoint

    def save_then_die(self, hooks):
        orig(self, hooks)
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed

    Trainer._save_checkpoint = save_then_die
    try:
        with pytest.raises(Killed):
            execute(spec, base / "cut", progress=False)
    finally:
        Trainer._save_checkpoint = orig
    assert safe_torch_load(base / "cut" / "ckpt" / "last.pt")["epoch"] == 2
    assert safe_torch_load(base / "cut" / "ckpt" / "prev.pt")["epoch"] == 1
    return spec, base / "ref", base / "cut"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path, where: float = 0.5) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_bit_flip_in_checkpoint_data_is_detected(tmp_path):
    """torch.load alone would return the flipped tensor: the zip records' CRCs are checked."""
    path = tmp_path / "last.pt"
    torch.save({"w": torch.arange(100_000, dtype=torch.float32)}, path)
    _flip_byte(path)
    assert not torch.equal(torch.load(path, weights_only=True)["w"],
                           torch.arange(100_000, dtype=torch.float32))  # silently wrong
    with pytest.raises(CheckpointError, match="CRC"):
        safe_torch_load(path)


@pytest.mark.slow
def test_truncated_last_checkpoint_resumes_from_previous(interrupted, tmp_path, caplog):
    spec, ref, cut = interrupted
    run = tmp_path / "run"
    shutil.copytree(cut, run)
    _truncate(run / "ckpt" / "last.pt")
    stale = run / "ckpt" / ".last.pt.abc123.tmp"  # what a writer killed mid-write leaves
    stale.write_bytes(b"\x80half")
    with caplog.at_level("INFO", logger="hypersparse"):
        m = execute(spec, run, progress=False)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "last.pt cannot be loaded safely" in text and "trying the previous checkpoint" in text
    assert "prev.pt (phase dense, epoch 1)" in text
    assert m["status"] == "ok" and m["epochs_trained"] == 3
    assert_same_result(ref, run)
    assert not no_temp_files(run), "stale temp file of the killed writer left behind"


@pytest.mark.slow
def test_both_checkpoints_corrupt_restart_from_scratch(interrupted, tmp_path, caplog):
    spec, ref, cut = interrupted
    run = tmp_path / "run"
    shutil.copytree(cut, run)
    _truncate(run / "ckpt" / "last.pt")
    _flip_byte(run / "ckpt" / "prev.pt", 0.3)  # inside the model weights: loads, but wrong
    with caplog.at_level("WARNING", logger="hypersparse"):
        execute(spec, run, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("starts from scratch" in w for w in warnings), warnings
    assert_same_result(ref, run)
    before = snapshot(run)
    execute(spec, run, progress=False)  # no crash loop: a finished run is left alone
    assert snapshot(run) == before


@pytest.mark.slow
def test_checkpoint_of_another_spec_is_not_resumed(interrupted, tmp_path, caplog):
    """Snakemake deletes spec.json (an output) before rerunning a job whose params changed:
    the checkpoint itself must say which spec it belongs to."""
    spec, _, cut = interrupted
    run = tmp_path / "run"
    shutil.copytree(cut, run)
    (run / "spec.json").unlink()
    (run / "history.csv").unlink()
    changed = RunSpec.from_dict({**spec.to_dict(), "optim": {**spec.to_dict()["optim"],
                                                            "lr": 0.02}})
    with caplog.at_level("WARNING", logger="hypersparse"):
        m = execute(changed, run, progress=False)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "belongs to another run spec (differs in: optim)" in text
    assert "starts from scratch" in text
    assert m["epochs_trained"] == 3 and m["spec"]["optim"]["lr"] == 0.02
    lrs = [r.split(",")[3] for r in (run / "history.csv").read_text().splitlines()[1:]]
    assert lrs == ["0.02"] * 3


# --------------------------------------------------------------- 4. atomic writes
def test_writer_failing_half_way_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save(path, {"w": torch.zeros(1000)})
    real_save = torch.save

    def half_then_fail(obj, f):
        real_save(obj, f)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hio.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        atomic_torch_save(path, {"w": torch.ones(1000)})
    monkeypatch.undo()
    assert torch.equal(safe_torch_load(path)["w"], torch.zeros(1000))
    assert not no_temp_files(tmp_path)

    mpath = tmp_path / "metrics.json"
    atomic_write_json(mpath, {"status": "ok", "final_test_acc": 90.0})
    monkeypatch.setattr(hio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_json(mpath, {"status": "ok", "final_test_acc": 10.0})
    monkeypatch.undo()
    assert json.loads(mpath.read_text())["final_test_acc"] == 90.0
    assert not no_temp_files(tmp_path)
    with pytest.raises(ValueError):  # NaN is refused before anything is written
        atomic_write_json(mpath, {"final_test_acc": float("nan")})
    assert json.loads(mpath.read_text())["final_test_acc"] == 90.0


HANGING_WRITER = """
import os, sys, time, torch
from hypersparse import io
real = torch.save
def hang_half_way(obj, f):
    real(obj, f)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    print("HALF", flush=True)
    time.sleep(600)
io.torch.save = hang_half_way
io.atomic_torch_save(sys.argv[1], {"w": torch.ones(1 << 20)})
"""


@pytest.mark.slow
def test_writer_killed_mid_write_leaves_previous_file(tmp_path, digits_root):
    run = tmp_path / "run"
    spec = RunSpec.from_dict(tiny_spec(digits_root, epochs=1, batch_size=128))
    path = run / "model.pt"
    atomic_torch_save(path, {"w": torch.zeros(1 << 20)})
    proc = subprocess.Popen([sys.executable, "-c", HANGING_WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "HALF"
    proc.kill()
    proc.wait()
    assert torch.equal(safe_torch_load(path)["w"], torch.zeros(1 << 20))
    assert len(no_temp_files(run)) == 1, "the killed writer's temp file is there"
    execute(spec, run, progress=False)  # the next run in this folder cleans up
    assert not no_temp_files(run)
    assert metrics(run)["status"] == "ok"


def test_readers_never_see_a_partial_metrics_json(tmp_path):
    path = tmp_path / "metrics.json"
    big = [{"status": "ok", "i": i, "layer_density": {f"l{j}.weight": 0.5 for j in range(20000)}}
           for i in range(2)]
    atomic_write_json(path, big[0])
    stop = threading.Event()
    writes = {"n": 0}

    def writer() -> None:
        while not stop.is_set():
            atomic_write_json(path, big[writes["n"] % 2])
            writes["n"] += 1

    t = threading.Thread(target=writer)
    t.start()
    reads = 0
    try:
        end = time.monotonic() + 2.0
        while time.monotonic() < end or writes["n"] < 10:
            obj = json.loads(path.read_text())  # raises on a partial file
            assert obj["status"] == "ok" and len(obj["layer_density"]) == 20000
            reads += 1
    finally:
        stop.set()
        t.join()
    assert reads > 10 and writes["n"] >= 10


# ----------------------------------------------------------------------- 5. diverging runs
def test_diverging_run_stops_with_a_clear_error(digits_root, tmp_path, capsys):
    from hypersparse.cli import main

    spec = json.dumps(tiny_spec(digits_root, epochs=2, batch_size=128, lr=1e12))
    rc = main(["train", "--spec-json", spec, "--threads", "1", "--out", str(tmp_path / "a")])
    assert rc == 3
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("hypersparse: error: training diverged"), err
    assert "epoch 0" in err[0] and "learning rate" in err[0]
    assert not (tmp_path / "a" / "metrics.json").exists()

    rec = run_cli("train", "--spec-json", spec, "--threads", "1", "--record-failure",
                  "--out", str(tmp_path / "b"))
    assert rec.returncode == 0, rec.stderr
    m = metrics(tmp_path / "b")
    assert m["status"] == "failed" and "epoch 0" in m["error"] and "final_test_acc" not in m
    assert "run failed: training diverged" in rec.stderr
