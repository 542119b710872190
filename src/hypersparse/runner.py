"""Run one spec into one run folder: train (or resume), then write model.pt and metrics.json.

metrics.json is written last and atomically; its presence with status "ok" (or "failed")
marks a finished run, which is never retrained. Sparsity is counted from the saved model.pt,
not from memory. A finished run's files are also hard-linked into ``.final/`` (no extra disk
space): if a workflow deletes them to rerun the job (Snakemake does so for a job it considers
incomplete or out of date), the rerun restores them instead of training again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import flops
from . import masks as mask_ops
from .engine import DivergenceError, Trainer
from .errors import UserError
from .io import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_json,
    git_commit,
    model_state,
    package_versions,
    remove_stale_temp_files,
    safe_torch_load,
)
from .methods import build_params, get_method
from .methods.base import checked_dense_files, hand_over_dense_file
from .spec import RunSpec, spec_differences

log = logging.getLogger("hypersparse")


class SpecMismatchError(UserError, RuntimeError):
    """The run folder already belongs to a different spec."""


class DenseFiles:
    """The dense run folder a method starts from; ``--init`` can stand in for its model.pt.

    Methods write ``dense_dir / "model.pt"``; this object answers that with the right path.
    """

    def __init__(self, folder: Path | None, init: Path | None = None) -> None:
        self.folder = Path(folder) if folder else None
        self.init = Path(init) if init else None

    def __truediv__(self, name: str) -> Path:
        if name == "model.pt" and self.init is not None:
            return self.init
        if self.folder is None:
            raise CheckpointError(f"this method needs {name} of a dense run: pass --dense-dir")
        return self.folder / name


def read_spec_file(path: Path) -> dict[str, Any]:
    """spec.json of an unfinished run; a garbled one is a UserError naming the fix."""
    try:
        obj = json.loads(Path(path).read_text())
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return obj
    except (OSError, ValueError) as exc:
        raise SpecMismatchError(
            f"{path} (the spec of an unfinished run) is unreadable ({exc}); delete "
            f"{Path(path).parent} to start that run over"
        ) from None


def check_dense_source(spec: RunSpec, dense: DenseFiles | None) -> None:
    """Before any output is written: the method's dense inputs exist and fit the model."""
    from .data import dataset_info
    from .io import load_state_dict_checked
    from .models import build_model

    cls = get_method(spec.family)
    needed = cls.dense_inputs(build_params(spec.family, spec.params, f"methods.{spec.label}"))
    if not needed:
        return
    if dense is None:
        raise CheckpointError(
            f"method {spec.family} starts from a dense run ({', '.join(needed)}): "
            "pass --dense-dir (or --init for model.pt)"
        )
    if dense.folder is not None:
        done = _finished_metrics(dense.folder / "metrics.json")
        if done is not None and done.get("status") == "failed":
            raise CheckpointError(
                f"the dense run {dense.folder} failed ({done.get('error', 'no detail')}); "
                f"{spec.family} cannot start from it: fix its settings, delete {dense.folder} "
                "and train it again"
            )
    info = dataset_info(spec.dataset, image_size=spec.image_size, root=spec.data_root)
    model = build_model(spec.model, info.num_classes, in_channels=info.in_channels, width=spec.width)
    for name in needed:
        path = dense / name
        obj = safe_torch_load(path)
        state = model_state(obj)
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path} holds no state dict")
        load_state_dict_checked(model, state, str(path))
        hand_over_dense_file(path, obj)  # the method loads it from here: read once per run


def run_identity(spec: RunSpec) -> dict[str, Any]:
    """The fields that name a run in tables."""
    return {
        "dataset": spec.dataset,
        "model": spec.model,
        "method": spec.label,
        "method_family": spec.family,
        "kappa": spec.kappa,
        "seed": spec.seed,
    }


FINAL_DIR = ".final"  # hard links of a finished run's files


def _finished_metrics(path: Path) -> dict[str, Any] | None:
    """The metrics of a finished run from ``path`` (metrics.json), else None."""
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("status") in ("ok", "failed") else None


def finished(run_dir: Path) -> bool:
    """True when the run folder holds a finished run (metrics.json with a status)."""
    return _finished_metrics(Path(run_dir) / "metrics.json") is not None


def seal(run_dir: Path) -> None:
    """Hard-link every file of a finished run into ``run_dir/.final`` (see module docstring).

    Where the file system has no hard links the run is left unsealed, with a warning.
    """
    run_dir = Path(run_dir)
    tmp, final = run_dir / f"{FINAL_DIR}.tmp", run_dir / FINAL_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for f in sorted(run_dir.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                os.link(f, tmp / f.name)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("cannot hard-link %s's files into %s (%s): a workflow rerun of this job "
                    "could not restore them", run_dir, FINAL_DIR, exc)
        return
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def restore_sealed(run_dir: Path) -> list[str]:
    """Bring back the files of a sealed finished run that were deleted; returns their names."""
    run_dir = Path(run_dir)
    final = run_dir / FINAL_DIR
    if _finished_metrics(final / "metrics.json") is None:
        return []
    restored = []
    for f in sorted(final.iterdir()):
        target = run_dir / f.name
        if f.is_file() and not target.exists():
            os.link(f, target)
            restored.append(f.name)
    if restored:
        log.warning(
            "%s is a finished run whose files were deleted (%s), e.g. by a workflow rerunning "
            "the job: restored them from %s/ instead of training again. To retrain, delete %s.",
            run_dir, ", ".join(restored), FINAL_DIR, run_dir,
        )
    return restored


def execute(
    spec: RunSpec,
    run_dir: Path,
    dense_dir: Path | DenseFiles | None = None,
    *,
    record_failure: bool = False,
    progress: bool | None = None,
    compile_mode: str | None = None,
    cuda_graphs: bool | str | None = None,
) -> dict[str, Any]:
    """Train ``spec`` into ``run_dir`` (resuming if interrupted) and return its metrics.

    With ``record_failure`` a diverging run is recorded as status "failed" in metrics.json
    (so the grid goes on and tables show the failure); otherwise the error propagates.
    ``compile_mode`` (a torch.compile mode, or None for eager) and ``cuda_graphs`` (None:
    steps captured as CUDA graphs on CUDA; False: eager) are execution options like the thread
    count: recorded in metrics.json but not part of the spec.
    """
    run_dir = Path(run_dir)
    if dense_dir is not None and not isinstance(dense_dir, DenseFiles):
        dense_dir = DenseFiles(dense_dir)
    method_cls = get_method(spec.family)
    params = build_params(spec.family, spec.params, f"methods.{spec.label}")
    if finished(run_dir):  # read-only answer, no lock needed
        return _finished_result(run_dir, spec)
    with run_folder_lock(run_dir), checked_dense_files():
        return _execute(spec, run_dir, dense_dir, method_cls, params, record_failure, progress,
                        compile_mode, cuda_graphs)


class RunFolderBusyError(UserError, RuntimeError):
    """Another process is training into the same run folder."""


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``run_dir/.lock`` (two writers would corrupt the run)."""
    import fcntl

    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(
            f"cannot create the run folder {run_dir}: a file is in the way of that path; "
            "choose another --out or results_dir"
        ) from None
    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderBusyError(
                f"{run_dir} is being trained by another process ({holder}); wait for it to "
                "finish, or use another --out / results_dir"
            ) from None
        except OSError:
            pass  # no flock on this file system: go on unlocked
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)
        if created and [p.name for p in run_dir.iterdir()] == [".lock"]:
            shutil.rmtree(run_dir, ignore_errors=True)  # refused before writing anything
        elif finished(run_dir):
            path.unlink(missing_ok=True)


def _finished_result(run_dir: Path, spec: RunSpec) -> dict[str, Any]:
    """The metrics of the finished run in ``run_dir``; refused if it has another spec."""
    done = _finished_metrics(run_dir / "metrics.json")
    assert done is not None
    old = done.get("spec")
    if isinstance(old, dict) and old != spec.to_dict():
        raise SpecMismatchError(
            f"{run_dir} holds a finished run of a different spec (differs in: "
            f"{', '.join(spec_differences(old, spec.to_dict()))}). Finished runs are never "
            f"retrained: delete {run_dir} to retrain it with these settings, or use another "
            "results_dir / --out."
        )
    log.info("%s is finished already; nothing to do", run_dir)
    return done


def _execute(spec: RunSpec, run_dir: Path, dense_dir: DenseFiles | None, method_cls: Any,
             params: Any, record_failure: bool, progress: bool | None,
             compile_mode: str | None, cuda_graphs: bool | str | None) -> dict[str, Any]:
    restore_sealed(run_dir)
    if finished(run_dir):
        return _finished_result(run_dir, spec)
    check_dense_source(spec, dense_dir)
    spec_path = run_dir / "spec.json"
    if spec_path.exists():
        old = read_spec_file(spec_path)
        if old != spec.to_dict():
            raise SpecMismatchError(
                f"{run_dir} holds an unfinished run of a different spec (differs in: "
                f"{', '.join(spec_differences(old, spec.to_dict()))}). Delete {run_dir} to start "
                "over, or use another results_dir."
            )
    for folder in (run_dir, run_dir / "ckpt"):  # leftovers of a writer killed mid-write
        for tmp in remove_stale_temp_files(folder):
            log.warning("removed %s, left by an interrupted write", tmp)
    # data, resume state and the compile toolchain are checked first
    trainer = Trainer(spec, run_dir, progress=progress, compile_mode=compile_mode,
                      cuda_graphs=cuda_graphs)
    method = method_cls(spec, params)
    if not spec_path.exists():
        atomic_write_json(spec_path, spec.to_dict())
    try:
        extra = method.run(trainer, dense_dir)
    except DivergenceError as exc:
        if not record_failure:
            raise
        log.error("%s", exc)
        # Every declared output exists, so the workflow goes on and tables show "failed".
        atomic_torch_save(run_dir / "model.pt", {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()})
        if not (run_dir / "history.csv").exists():
            trainer.write_history()
        method.write_failure_outputs(run_dir)
        metrics = {**run_identity(spec), "status": "failed", "error": str(exc), "spec": spec.to_dict()}
        shutil.rmtree(trainer.ckpt_dir, ignore_errors=True)
        atomic_write_json(run_dir / "metrics.json", metrics)
        seal(run_dir)
        return metrics
    model_path = run_dir / "model.pt"
    atomic_torch_save(model_path, {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()})
    saved = safe_torch_load(model_path)
    if spec.family != "dense":  # a pruned run also leaves its mask in a safe format
        from .export import write_mask

        write_mask(run_dir, saved)
    metrics = _metrics(spec, method_cls, trainer, saved, extra, trainer.wall_time())
    shutil.rmtree(trainer.ckpt_dir, ignore_errors=True)
    atomic_write_json(run_dir / "metrics.json", metrics)  # last: marks the run finished
    seal(run_dir)
    return metrics


def _flops(spec: RunSpec, method_cls: Any, trainer: Trainer, rep: dict[str, Any]
           ) -> dict[str, float]:
    """Inference FLOPs per image (sparse and dense) and training FLOPs of the whole run
    relative to dense training (flops.py)."""
    dense_fwd = float(sum(trainer.layer_flops.values()))
    sparse_fwd = flops.sparse_flops(trainer.layer_flops, rep["layer_density"])
    n_train = trainer.train_loader.num_samples
    dense_epoch = flops.TRAIN_FACTOR * dense_fwd * n_train
    params = build_params(spec.family, spec.params, f"methods.{spec.label}")
    prereq = method_cls.dense_epochs_used(params, spec.dense.epochs) * dense_epoch
    train = trainer.train_flops + prereq
    dense_ref = spec.dense.epochs * dense_epoch
    return {
        "inference_dense": dense_fwd,
        "inference": sparse_fwd,
        "inference_ratio": sparse_fwd / dense_fwd if dense_fwd else 1.0,
        "train": train,
        "train_dense": dense_ref,
        "train_ratio": train / dense_ref if dense_ref else 1.0,
    }


def _metrics(
    spec: RunSpec, method_cls: Any, trainer: Trainer, saved: dict, extra: dict, wall: float
) -> dict[str, Any]:
    rep = mask_ops.sparsity_report(saved)
    flop_report = _flops(spec, method_cls, trainer, rep)
    target = mask_ops.target_zeros(spec.kappa, rep["num_prunable"]) if method_cls.exact_sparsity else None
    if rep["disconnected_layers"]:
        log.warning(
            "layers with no remaining weight (the network is disconnected there): %s",
            ", ".join(rep["disconnected_layers"]),
        )
    hist = trainer.history
    if not hist:
        raise UserError(
            f"run {spec.label} trained no epoch: give its schedule at least one epoch "
            "(dense.epochs / finetune.epochs, or the method's own epochs)")
    last_phase = hist[-1]["phase"]
    final_rows = [r for r in hist if r["phase"] == last_phase]
    best = max(final_rows, key=lambda r: r["test_acc"]) if final_rows else None
    metrics: dict[str, Any] = {
        **run_identity(spec),
        "status": "ok",
        "error": None,
        "final_test_acc": final_rows[-1]["test_acc"] if final_rows else None,
        "final_train_acc": final_rows[-1]["train_acc"] if final_rows else None,
        "best_test_acc": best["test_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "best_test_acc_selected_on": "test",
        "target_zeros": target,
        "sparsity_ok": (rep["num_zero"] == target) if target is not None else None,
        "epochs": trainer.epoch,
        "epochs_trained": len(hist),
        "wall_time_s": wall,
        "started_at": trainer.started_at,
        "finished_at": time.time(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": str(trainer.device),
        "compile": trainer.compile_mode,
        "step_mode": trainer.step_mode,
        "step_graph": trainer.graph_stats,
        "threads": torch.get_num_threads(),
        "num_classes": trainer.info.num_classes,
        "flops": flop_report,
        "size": flops.size_report(saved),
        "spec": spec.to_dict(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        **rep,
        **extra,
    }
    if target is not None and not metrics["sparsity_ok"]:
        log.warning("achieved %d zeros, target %d", rep["num_zero"], target)
    return metrics
