"""Run one spec into one run folder: train (or resume), then write model.pt and metrics.json.

metrics.json is written last and atomically; its presence with status "ok" marks a finished
run, which is never retrained. Sparsity is counted from the saved model.pt, not from memory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from . import masks as M
from .engine import DivergenceError, Trainer
from .errors import UserError
from .io import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_json,
    git_commit,
    package_versions,
    remove_stale_temp_files,
    safe_torch_load,
)
from .methods import build_params, get_method
from .spec import RunSpec

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


def check_dense_source(spec: RunSpec, dense: DenseFiles | None) -> None:
    """Before any output is written: the method's dense inputs exist and fit the model."""
    from .data import dataset_info
    from .io import load_state_dict_checked
    from .models import build_model

    cls = get_method(spec.family)
    needed = cls.dense_inputs(build_params(spec.family, spec.params, f"methods.{spec.method}"))
    if not needed:
        return
    if dense is None:
        raise CheckpointError(
            f"method {spec.family} starts from a dense run ({', '.join(needed)}): "
            "pass --dense-dir (or --init for model.pt)"
        )
    info = dataset_info(spec.dataset, image_size=spec.image_size, root=spec.data_root)
    model = build_model(spec.model, info.num_classes, in_channels=info.in_channels, width=spec.width)
    for name in needed:
        path = dense / name
        obj = safe_torch_load(path)
        state = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path} holds no state dict")
        load_state_dict_checked(model, state, str(path))


def run_identity(spec: RunSpec) -> dict[str, Any]:
    """The fields that name a run in tables."""
    return {
        "dataset": spec.dataset,
        "model": spec.model,
        "method": spec.method,
        "method_family": spec.family,
        "kappa": spec.kappa,
        "seed": spec.seed,
    }


def finished(run_dir: Path) -> bool:
    """True when the run folder holds a finished run (metrics.json with a status)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") in ("ok", "failed")
    except (OSError, ValueError):
        return False


def execute(
    spec: RunSpec,
    run_dir: Path,
    dense_dir: Path | DenseFiles | None = None,
    *,
    record_failure: bool = False,
    progress: bool | None = None,
    compile_mode: str | None = None,
) -> dict[str, Any]:
    """Train ``spec`` into ``run_dir`` (resuming if interrupted) and return its metrics.

    With ``record_failure`` a diverging run is recorded as status "failed" in metrics.json
    (so the grid goes on and tables show the failure); otherwise the error propagates.
    ``compile_mode`` (a torch.compile mode, or None for eager) is an execution option like
    the thread count: it is recorded in metrics.json but not part of the spec.
    """
    run_dir = Path(run_dir)
    if dense_dir is not None and not isinstance(dense_dir, DenseFiles):
        dense_dir = DenseFiles(dense_dir)
    method_cls = get_method(spec.family)
    params = build_params(spec.family, spec.params, f"methods.{spec.method}")
    if finished(run_dir):
        log.info("%s is finished already; nothing to do", run_dir)
        return json.loads((run_dir / "metrics.json").read_text())
    spec_path = run_dir / "spec.json"
    if spec_path.exists():
        old = json.loads(spec_path.read_text())
        if old != spec.to_dict():
            diff = sorted(k for k in set(old) | set(spec.to_dict()) if old.get(k) != spec.to_dict().get(k))
            raise SpecMismatchError(
                f"{run_dir} holds an unfinished run of a different spec (differs in: "
                f"{', '.join(diff)}). Delete {run_dir} to start over, or use another results_dir."
            )
    for folder in (run_dir, run_dir / "ckpt"):  # leftovers of a writer killed mid-write
        for tmp in remove_stale_temp_files(folder):
            log.warning("removed %s, left by an interrupted write", tmp)
    t0 = time.perf_counter()
    # data, resume state and the compile toolchain are checked first
    trainer = Trainer(spec, run_dir, progress=progress, compile_mode=compile_mode)
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
        atomic_write_json(run_dir / "metrics.json", metrics)
        shutil.rmtree(trainer.ckpt_dir, ignore_errors=True)
        return metrics
    model_path = run_dir / "model.pt"
    atomic_torch_save(model_path, {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()})
    saved = safe_torch_load(model_path)
    metrics = _metrics(spec, method_cls, trainer, saved, extra, time.perf_counter() - t0)
    atomic_write_json(run_dir / "metrics.json", metrics)
    shutil.rmtree(trainer.ckpt_dir, ignore_errors=True)
    return metrics


def _metrics(
    spec: RunSpec, method_cls: Any, trainer: Trainer, saved: dict, extra: dict, wall: float
) -> dict[str, Any]:
    rep = M.sparsity_report(saved)
    target = M.target_zeros(spec.kappa, rep["num_prunable"]) if method_cls.exact_sparsity else None
    if rep["disconnected_layers"]:
        log.warning(
            "layers with no remaining weight (the network is disconnected there): %s",
            ", ".join(rep["disconnected_layers"]),
        )
    hist = trainer.history
    last_phase = hist[-1]["phase"] if hist else None
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
        "device": str(trainer.device),
        "compile": trainer.compile_mode,
        "threads": torch.get_num_threads(),
        "spec": spec.to_dict(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        **rep,
        **extra,
    }
    if target is not None and not metrics["sparsity_ok"]:
        log.warning("achieved %d zeros, target %d", rep["num_zero"], target)
    return metrics
