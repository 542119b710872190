"""The adversarial suite: every file the pipeline reads (run folders, checkpoints, caches,
configs, CLI arguments, plugins) damaged or mistyped, and every way a job can die (kill, disk
full, read-only disk, concurrent writers). One rule for all of it: a bad input is refused
before any work and before any deletion, in one line that names the file or key and the fix;
a finished result is never deleted or retrained by a rerun.

Each case is one test id; the closing note of the reliability issue counts them.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
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

from hypersparse.cli import main
from hypersparse.config import ConfigError, load_config

DEMO = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def refused(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI in-process: exit 2 and exactly one error line holding every needle."""
    rc = main(argv)
    err = error_lines(capsys.readouterr().err)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("hypersparse: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def train_argv(spec: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--spec-json", json.dumps(spec), "--out", str(out), *extra]


# ===================================================================== bad CLI arguments / specs
@pytest.mark.parametrize(
    "change, needles",
    [
        ({"seed": "zero"}, ["seed", "integer"]),
        ({"kappa": float("nan")}, ["kappa", "finite"]),
        ({"optim": {"lr": "fast"}}, ["optim.lr", "finite number"]),
        ({"optim": {"lr": float("inf")}}, ["optim.lr", "finite"]),
        ({"optim": {"batch_size": 0}}, ["optim.batch_size", ">= 1"]),
        ({"dense": {"epochs": 0, "milestones": []}}, ["dense.epochs", ">= 1"]),
        ({"dense": {"epochs": 3, "milestones": [5]}}, ["dense.milestones", "never happens"]),
        ({"dense": {"epochs": 3, "milestones": "80"}}, ["dense.milestones", "list of integers"]),
        ({"width": -1}, ["width"]),
        ({"params": [1, 2]}, ["params", "mapping"]),
        ({"device": "tpu"}, ["tpu", "cpu"]),
        ({"device": "cuda"} if not torch.cuda.is_available() else {"device": "cuda:99"},
         ["cuda", "visible"]),
    ],
    ids=["seed-str", "kappa-nan", "lr-str", "lr-inf", "batch-0", "epochs-0", "milestone-late",
         "milestones-str", "width-neg", "params-list", "device-tpu", "device-cuda-missing"],
)
def test_bad_spec_is_refused_in_one_line(digits_root, tmp_path, capsys, change, needles):
    out = tmp_path / "run"
    refused(capsys, train_argv(tiny_spec(digits_root, **change), out), *needles)
    assert not out.exists()


@pytest.mark.parametrize("epochs", ["0", "-1", "two"])
def test_epochs_below_one_are_refused_by_argparse(digits_root, tmp_path, capsys, epochs):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "digits", "--model", "resnet8", "--data-root",
              str(digits_root), "--epochs", epochs, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--epochs" in err and ("at least 1" in err or "whole number" in err)
    assert not out.exists()


def test_out_under_a_regular_file_is_refused(digits_root, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    refused(capsys, train_argv(tiny_spec(digits_root, epochs=1), blocker / "run"),
            "a file is in the way", str(blocker / "run"))
    assert blocker.read_text() == "x"


def test_garbled_spec_json_of_an_unfinished_run_is_refused(digits_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "spec.json").write_text('{"dataset": "dig')
    refused(capsys, train_argv(tiny_spec(digits_root, epochs=1), out),
            str(out / "spec.json"), "delete")
    assert (out / "spec.json").read_text() == '{"dataset": "dig'


def test_finished_run_of_another_spec_is_refused_untouched(digits_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(tiny_spec(digits_root, epochs=1), out)) == 0
    capsys.readouterr()
    before = snapshot(out)
    refused(capsys, train_argv(tiny_spec(digits_root, epochs=2), out),
            "finished run of a different spec", "dense", "never retrained")
    assert snapshot(out) == before


def test_sparse_run_from_a_failed_dense_run_is_refused(digits_root, tmp_path, capsys):
    dense = tmp_path / "dense"
    spec = tiny_spec(digits_root, epochs=1, lr=1e30)
    assert main(train_argv(spec, dense, "--record-failure")) == 0
    assert metrics(dense)["status"] == "failed"
    capsys.readouterr()
    out = tmp_path / "omp"
    omp = tiny_spec(digits_root, epochs=1, family="omp", kappa=0.9)
    refused(capsys, ["sparsify", "--spec-json", json.dumps(omp), "--out", str(out),
                     "--dense-dir", str(dense)], "dense run", "failed", "fix its settings")
    assert not out.exists()


# ================================================================================= plugins
PLUGIN_RAISES = "raise RuntimeError('plugin bug')\n"
PLUGIN_CLASH = """\
from hypersparse.methods import Method, register


@register
class NotOMP(Method):
    family = "omp"
"""


@pytest.mark.parametrize("source, needles", [
    (PLUGIN_RAISES, ["adv_plugin", "RuntimeError", "plugin bug"]),
    (PLUGIN_CLASH, ["adv_plugin", "'omp'", "already has"]),
], ids=["raises-on-import", "replaces-builtin"])
def test_bad_plugin_is_refused_in_one_line(digits_root, tmp_path, capsys, monkeypatch, source,
                                           needles):
    (tmp_path / "adv_plugin.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("adv_plugin", None)
    out = tmp_path / "run"
    refused(capsys, [*train_argv(tiny_spec(digits_root, epochs=1), out), "--plugin",
                     "adv_plugin"], *needles)
    assert not out.exists()
    sys.modules.pop("adv_plugin", None)
    cfg = dict(DEMO, plugins=["adv_plugin"])
    with pytest.raises(ConfigError, match="plugins"):
        from hypersparse.config import validate_config

        validate_config(cfg)
    sys.modules.pop("adv_plugin", None)


# ================================================================================= configs
@pytest.mark.parametrize(
    "text, replaces, needles",
    [
        ("kappas: [.nan]", ["kappas"], ["kappas[0]", "NaN or infinite"]),
        ("optim: {lr: .nan}", ["optim"], ["optim.lr", "NaN or infinite"]),
        ("optim: {lr: .inf}", ["optim"], ["optim.lr", "NaN or infinite"]),
        ("dense: {epochs: 10, milestones: [20]}", ["dense"], ["dense.milestones", "never happens"]),
        ("finetune: {epochs: 0}", ["finetune"], ["finetune.epochs"]),
        ("figures: {kappa: 0.5}", ["figures"], ["figures.kappa", "not a kappa of the grid"]),
        ("results_dir: ''", ["results_dir"], ["results_dir"]),
        ("methods:\n  art_hs: {family: art, warmup_epochs: 50}", ["methods"],
         ["methods.art_hs", "after epoch 50", "dense.epochs is 10"]),
        ("methods:\n  lth: {rewind_epoch: 10}", ["methods"], ["methods.lth", "rewind_epoch 10"]),
        ("seeds: [0]\nseeds: [1]", ["seeds"], ["duplicate key 'seeds'", "line"]),
        ("optim: {lr: 0.1\nseeds: [0]", ["optim", "seeds"], ["not valid YAML", "line"]),
    ],
    ids=["kappa-nan", "lr-nan", "lr-inf", "milestone-late", "finetune-0", "figure-kappa",
         "empty-results-dir", "warmup-too-long", "rewind-too-late", "duplicate-key",
         "yaml-syntax"],
)
def test_bad_config_is_refused_in_one_line(tmp_path, capsys, text, replaces, needles):
    path = tmp_path / "bad.yaml"
    base = {k: v for k, v in DEMO.items() if k not in replaces}
    path.write_text(yaml.safe_dump(base) + text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    refused(capsys, ["validate-config", str(path)], *needles)


# ============================================================================== data caches
def _copy_cache(digits_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(digits_root, root)
    return root, next(root.glob("digits/prepared*"))


def test_cache_with_permuted_labels_is_refused_when_training(digits_root, tmp_path, capsys):
    import numpy as np

    root, prepared = _copy_cache(digits_root, tmp_path)
    with np.load(prepared / "train.npz") as z:
        images, labels = z["images"], z["labels"]
    with open(prepared / "train.npz", "wb") as fh:  # same size, other labels
        np.savez(fh, images=images, labels=np.roll(labels, 1))
    out = tmp_path / "run"
    refused(capsys, train_argv(tiny_spec(root, epochs=1), out), "train.npz", "SHA-256",
            "delete")
    assert not out.exists()


def test_cache_with_std_zero_is_refused(digits_root, tmp_path, capsys):
    root, prepared = _copy_cache(digits_root, tmp_path)
    meta = json.loads((prepared / "meta.json").read_text())
    meta["std"] = [0.0]
    (prepared / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "run"
    refused(capsys, train_argv(tiny_spec(root, epochs=1), out), "std", "meta.json")
    assert not out.exists()


# ========================================================================= resume checkpoints
@pytest.fixture(scope="module")
def straight(tmp_path_factory, digits_root):
    """An uninterrupted 6-epoch run and its spec."""
    spec = tiny_spec(digits_root, epochs=6, batch_size=64)
    out = tmp_path_factory.mktemp("straight") / "run"
    assert run_cli(*train_argv(spec, out)).returncode == 0
    return spec, out


def _interrupted(spec: dict, out: Path, epochs_done: int) -> None:
    """A run killed after ``epochs_done`` epochs (SIGKILL once that epoch's checkpoint exists)."""
    proc = subprocess.Popen(cli_args(*train_argv(spec, out)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: history_rows(out) >= epochs_done, proc, what="the checkpoints")
    proc.kill()
    proc.wait()


def _same(a: Path, b: Path) -> None:
    ma, mb = metrics(a), metrics(b)
    for key in ("final_test_acc", "final_train_acc", "best_test_acc", "num_zero", "epochs"):
        assert ma[key] == mb[key], key
    sa, sb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["lacks-keys", "wrong-shapes"])
def test_unusable_resume_checkpoint_falls_back(straight, tmp_path, damage):
    spec, ref = straight
    out = tmp_path / "run"
    _interrupted(spec, out, 2)
    last = out / "ckpt" / "last.pt"
    if not last.exists():
        pytest.skip("killed before a second checkpoint")
    ck = torch.load(last, weights_only=True)
    if damage == "lacks-keys":
        del ck["phase"]
    else:
        key = next(k for k, v in ck["model"].items() if v.dim() == 4)
        ck["model"][key] = torch.zeros(1, 1, 1, 1)
    torch.save(ck, last)
    again = run_cli(*train_argv(spec, out))
    assert again.returncode == 0, again.stderr
    assert "trying the previous checkpoint" in again.stderr
    _same(ref, out)
    m = metrics(out)
    assert m["wall_time_s"] > 0 and m["epochs_trained"] == 6


@pytest.mark.slow
def test_wall_time_counts_every_segment(straight, tmp_path):
    spec, _ = straight
    out = tmp_path / "run"
    _interrupted(spec, out, 2)
    ck = torch.load(out / "ckpt" / "last.pt", weights_only=True)
    before = float(ck["wall_time_s"])
    assert before > 0
    assert run_cli(*train_argv(spec, out)).returncode == 0
    assert metrics(out)["wall_time_s"] > before


# ============================================================== how a job can die: disk, perms
def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_disk_full_is_one_line_and_the_rerun_finishes(straight, tmp_path):
    """Checkpoints hit the file size limit (as on a full disk): one clear line, nothing
    finished is claimed, and once there is room the run resumes to the same result."""
    spec, ref = straight
    out = tmp_path / "run"
    proc = subprocess.run(cli_args(*train_argv(spec, out)), capture_output=True, text=True,
                          preexec_fn=_limit_file_size(20_000), timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = error_lines(proc.stderr)
    assert len(err) == 1 and "cannot write or read" in err[0] and "free" in err[0], err
    assert not (out / "metrics.json").exists()
    again = run_cli(*train_argv(spec, out))
    assert again.returncode == 0, again.stderr
    _same(ref, out)


def _mount_read_only(path: Path) -> bool:
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def test_read_only_results_folder_is_one_line(digits_root, tmp_path, capsys):
    ro = tmp_path / "ro"
    if not _mount_read_only(ro):
        pytest.skip("needs permission to mount a read-only tmpfs (root)")
    try:
        refused(capsys, train_argv(tiny_spec(digits_root, epochs=1), ro / "run"),
                "read-only", str(ro / "run"))
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


@pytest.mark.slow
def test_two_writers_of_one_run_folder(digits_root, tmp_path):
    """The second process is refused at once; the first finishes undisturbed."""
    spec = tiny_spec(digits_root, epochs=15, batch_size=64)
    out = tmp_path / "run"
    first = subprocess.Popen(cli_args(*train_argv(spec, out)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / ".lock").exists() and (out / "spec.json").exists(), first,
             what="the first writer's lock")
    second = run_cli(*train_argv(spec, out))
    assert second.returncode == 2
    err = error_lines(second.stderr)
    assert len(err) == 1 and "being trained by another process" in err[0], err
    assert first.wait(timeout=300) == 0
    assert metrics(out)["status"] == "ok" and metrics(out)["epochs_trained"] == 15
    assert not (out / ".lock").exists()


# ==================================================================== the workflow on a grid
GRID = """\
datasets: [digits]
image_size: 16
models: [resnet8]
width: 0.25
kappas: [0.9]
seeds: [0]
device: cpu
threads: 1
optim: {lr: 0.05, batch_size: 128}
dense: {epochs: 2, milestones: []}
finetune: {epochs: 1, milestones: []}
methods:
  omp: {}
resources: {train_mem_mb: 1000, train_runtime_min: 10}
"""
PATHS = ["results_dir=results", "figures_dir=figures", "data_root=data"]


def smk(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--cores", "2", "--configfile", "grid.yaml", *args]
    return subprocess.run(cmd, cwd=cwd, env=python_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A finished grid (dense + OMP at 0.9) in a folder that tests copy before damaging it."""
    base = tmp_path_factory.mktemp("advgrid") / "g"
    base.mkdir()
    (base / "grid.yaml").write_text(GRID)
    done = smk(base, "--config", *PATHS)
    assert done.returncode == 0, done.stderr[-3000:]
    return base


def copy_grid(grid: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "g"
    shutil.copytree(grid, dst, symlinks=True)
    return dst


def finished_runs(root: Path) -> dict:
    runs = [p.parent for p in (root / "results" / "runs").glob("*/*/*/*/*/metrics.json")]
    return snapshot(*runs)


def refused_workflow(proc: subprocess.CompletedProcess, *needles: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "the workflow did not start; nothing was run or deleted" in out, out[-3000:]
    for needle in needles:
        assert needle in out, (needle, out[-3000:])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_corrupt_cache_touches_no_finished_run(grid, tmp_path):
    g = copy_grid(grid, tmp_path)
    before = finished_runs(g)
    _flip_byte(next((g / "data").glob("digits/prepared*/train.npz")))
    again = smk(g, "--config", *PATHS)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    assert finished_runs(g) == before
    # a new cell needs the cache: refused before any job, naming the file and the fix
    grown = smk(g, "--config", *PATHS, "kappas=[0.9,0.98]")
    refused_workflow(grown, "train.npz", "does not match its checksum", "delete")
    assert finished_runs(g) == before
    assert not (g / "results" / "runs" / "digits" / "resnet8" / "omp" / "k0.98").exists()


@pytest.mark.slow
def test_truncated_dense_model_touches_no_finished_run(grid, tmp_path):
    g = copy_grid(grid, tmp_path)
    dense = g / "results" / "runs" / "digits" / "resnet8" / "dense" / "k0" / "seed0"
    with open(dense / "model.pt", "r+b") as fh:
        fh.truncate(500)
    before = finished_runs(g)
    grown = smk(g, "--config", *PATHS, "kappas=[0.9,0.98]")
    refused_workflow(grown, "model.pt", "cannot be loaded", f"delete {dense.relative_to(g)}")
    assert finished_runs(g) == before


@pytest.mark.slow
def test_changed_config_refuses_to_retrain_finished_runs(grid, tmp_path):
    g = copy_grid(grid, tmp_path)
    before = finished_runs(g)
    (g / "grid.yaml").write_text(GRID.replace("lr: 0.05", "lr: 0.07"))
    changed = smk(g, "--config", *PATHS)
    refused_workflow(changed, "finished run of another spec", "optim", "never retrained")
    assert finished_runs(g) == before


@pytest.mark.slow
def test_forced_rerun_restores_instead_of_retraining(grid, tmp_path):
    """Snakemake deletes a forced job's outputs first; the job restores them from .final."""
    g = copy_grid(grid, tmp_path)
    omp = g / "results" / "runs" / "digits" / "resnet8" / "omp" / "k0.9" / "seed0"
    before = {p.name: p.read_bytes() for p in omp.iterdir() if p.is_file()}
    forced = smk(g, "--config", *PATHS, "--forcerun", "sparse")
    assert forced.returncode == 0, forced.stderr[-3000:]
    log = (g / "results" / "logs" / "digits" / "resnet8" / "omp" / "k0.9" / "seed0.log")
    assert "restored them" in log.read_text()
    assert {p.name: p.read_bytes() for p in omp.iterdir() if p.is_file()} == before


GATE_PLUGIN = """\
import os
import time
from pathlib import Path

from hypersparse.engine import Phase
from hypersparse.methods import Method, register


@register
class Gate(Method):
    \"\"\"Trains one epoch once the file $GATE_FILE exists (holds its workflow open).\"\"\"

    family = "gate"
    exact_sparsity = False
    needs_kappa = False

    def run(self, trainer, dense_dir):
        while not Path(os.environ["GATE_FILE"]).exists():
            time.sleep(0.05)
        trainer.fit(Phase("gate", 1, 0.05))
        return {}
"""


@pytest.mark.slow
def test_two_workflows_on_one_results_dir(grid, tmp_path):
    """Started from different working directories: the second is refused by the lock on the
    results folder itself, and the first finishes."""
    g = copy_grid(grid, tmp_path)
    (tmp_path / "adv_gate.py").write_text(GATE_PLUGIN)
    gate = tmp_path / "go"
    env = python_env(tmp_path, GATE_FILE=str(gate))
    config = GRID.replace("methods:\n", "plugins: [adv_gate]\nmethods:\n  gate: {}\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    for where in (g, other):
        (where / "grid.yaml").write_text(config)
    res = g / "results"
    paths = [f"results_dir={res}", f"figures_dir={g / 'figures'}", f"data_root={g / 'data'}"]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--cores", "1", "--configfile", "grid.yaml", "--config", *paths]
    before = finished_runs(g)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, cwd=g, env=env, stdout=log, stderr=log)
        lock = res / ".hypersparse.lock"
        wait_for(lambda: lock.exists() and lock.read_text().startswith("pid"), first,
                 what="the first workflow's lock")
        second = subprocess.run(cmd, cwd=other, env=env, capture_output=True, text=True,
                                timeout=300)
        gate.touch()
        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert second.returncode != 0
    assert "is in use by another workflow" in second.stdout + second.stderr
    assert str(g) in second.stdout + second.stderr  # it names where the holder started
    gate_run = res / "runs" / "digits" / "resnet8" / "gate" / "k0" / "seed0"
    assert metrics(gate_run)["status"] == "ok"
    after = finished_runs(g)
    assert {k: v for k, v in after.items() if "/gate/" not in k} == before


def test_plot_of_an_unsafe_model_is_one_line(digits_root, tmp_path, capsys):
    run = tmp_path / "runs" / "digits" / "resnet8" / "omp" / "k0.9" / "seed0"
    assert main(train_argv(tiny_spec(digits_root, epochs=1), tmp_path / "dense")) == 0
    run.mkdir(parents=True)
    for name in ("metrics.json", "spec.json", "history.csv"):
        shutil.copy(tmp_path / "dense" / name, run / name)
    m = json.loads((run / "metrics.json").read_text())
    m.update(method="omp", method_family="omp", kappa=0.9)
    (run / "metrics.json").write_text(json.dumps(m))

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    torch.save({"w": Payload()}, run / "model.pt")
    capsys.readouterr()
    refused(capsys, ["plot", "layer_density", "--runs", str(tmp_path / "runs"), "--out",
                     str(tmp_path / "fig"), "--dataset", "digits", "--model", "resnet8"],
            "model.pt", "cannot be loaded safely")
    assert "payload ran" not in capsys.readouterr().out


@pytest.mark.slow
def test_duplicate_key_in_a_configfile_stops_the_workflow(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID + "seeds: [1]\n")
    proc = smk(tmp_path, "-n", "--config", *PATHS)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "duplicate key 'seeds'" in out, out[-2000:]
