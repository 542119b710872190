"""The one training engine: epochs, lr schedule, optimizer steps, evaluation, checkpoints.

Methods never copy this loop; they hook into it (:class:`Hooks`) and run it in phases
(:class:`Phase`: e.g. ART's regularised phase, then fine-tuning). Every epoch ends with an
atomic checkpoint, so an interrupted run resumes where it stopped and ends bit-identical
(on CPU) to an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import flops
from . import masks as mask_ops
from .capture import StepGraph, graphable_optimizer, sgd_update_
from .data import BatchLoader, dataset_info, load_split
from .errors import UserError
from .io import CheckpointError, atomic_torch_save, atomic_write_csv, safe_torch_load
from .models import build_model
from .progress import hms
from .spec import COMPILE_MODES, RunSpec, spec_differences
from .tb import EventWriter

log = logging.getLogger("hypersparse")

HISTORY_COLUMNS = (
    "phase",
    "epoch",
    "phase_epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "sparsity",
    "train_gflops",
    "seconds",
)


PROGRESS_EVERY_S = 60.0  # a progress line in the log this often within an epoch

CHECKPOINT_KEYS = ("spec", "phase", "phase_epoch", "epoch", "model", "optimizer", "scheduler",
                   "hooks", "rng", "done", "history")


class DivergenceError(UserError, RuntimeError):
    """Training produced a non-finite loss (exit status 3: the workflow records the run as
    failed instead of stopping)."""

    exit_code = 3


class CompileUnavailableError(UserError, RuntimeError):
    """``compile`` was asked for where TorchInductor cannot build kernels."""


class DeviceUnavailableError(UserError, RuntimeError):
    """The run asks for a device this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; a CUDA device that is not there is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceUnavailableError(
            f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceUnavailableError(
                f"device {name!r} asked for, but no CUDA GPU is visible here; use --device cpu "
                "or auto (config: device)"
            )
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(
                f"device {name!r} asked for, but only {count} CUDA device(s) are visible "
                f"(cuda:0..cuda:{count - 1})"
            )
    elif device.type != "cpu":
        raise DeviceUnavailableError(f"device {name!r} is not supported: use auto, cpu or cuda")
    return device


@dataclass
class Phase:
    """One stretch of training with one optimizer and one lr schedule."""

    name: str
    epochs: int  # maximum number of epochs; hooks may stop earlier
    lr: float
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    start_epoch: int | None = None  # set the global epoch counter when the phase starts
    snapshots: dict[int, str] = field(default_factory=dict)  # phase epoch -> file name
    optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None
    scheduler_factory: Callable[[torch.optim.Optimizer], Any] | None = None


class Hooks:
    """Method plug-in points; the default does nothing (plain dense training).

    On CUDA the engine records the step (forward, backward, ``loss_term``, ``before_step``,
    the optimizer update, ``after_step``) once as a CUDA graph and replays it, if the hooks'
    class declares ``capture_safe = True`` in its own body: then those four hooks do device
    work only (no ``.item()``, ``float(t)``, branch on a device value or new mask tensors;
    per-epoch numbers come from :meth:`Trainer.scalar`), and host work goes into
    ``on_epoch_start`` / ``eager_iteration`` / ``after_iteration``. See
    :mod:`hypersparse.capture`.
    """

    capture_safe: ClassVar[bool] = True

    def on_phase_start(self, trainer: Trainer) -> None:
        """Called once when the phase starts fresh (not on resume)."""

    def on_resume(self, trainer: Trainer) -> None:
        """Called after :meth:`load_state_dict` when a phase resumes from a checkpoint."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Host, before the epoch's first step (e.g. set per-epoch :meth:`Trainer.scalar`)."""

    def eager_iteration(self, trainer: Trainer) -> bool:
        """Host, before a step: True runs this one eagerly even where steps are replayed
        from a CUDA graph (e.g. RigL's mask-update iterations)."""
        return False

    def after_iteration(self, trainer: Trainer) -> None:
        """Host, after every iteration's step (counters, mask updates between replays)."""

    def graph_key(self) -> Hashable:
        """Identity of the device state the captured step reads; a change re-records it."""
        return None

    def loss_term(self, trainer: Trainer, model: nn.Module) -> torch.Tensor | None:
        """Extra loss added to the cross-entropy (e.g. a regulariser)."""
        return None

    def replace_step(self, trainer: Trainer) -> bool:
        """After backward: return True when the hook took this iteration's update itself.

        The optimizer step (and ``before_step`` / ``after_step``) is then skipped, as RigL's
        reference code does on a mask-update iteration.
        """
        return False

    def before_step(self, trainer: Trainer) -> None:
        """After backward, before the optimizer step (e.g. mask gradients)."""

    def after_step(self, trainer: Trainer) -> None:
        """After the optimizer step (e.g. re-apply masks, drop/grow)."""

    def end_epoch(self, trainer: Trainer, row: dict[str, Any]) -> bool:
        """After the epoch's evaluation; return True to end the phase early."""
        return False

    def on_phase_end(self, trainer: Trainer) -> dict[str, Any]:
        """When the phase ends (before its final checkpoint); returns phase results."""
        return {}

    def divergence_hint(self) -> str:
        """The likely cause named when the loss of this phase turns non-finite."""
        return "a learning rate that is too large (optim.lr)"

    def state_dict(self) -> dict[str, Any]:
        """Method state to checkpoint (tensors, numbers, strings, lists, dicts only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class MaskHooks(Hooks):
    """Keeps pruned weights exactly zero through momentum and weight decay.

    Gradients of pruned weights are zeroed before the step (so momentum buffers stay zero)
    and the mask is re-applied after it (so weight decay and any residue cannot revive them).
    """

    capture_safe = True

    def __init__(self, masks: mask_ops.Masks | None = None) -> None:
        self.masks: mask_ops.Masks = masks or {}

    def graph_key(self) -> Hashable:
        """The mask tensors the captured step reads (update them in place to keep it)."""
        return tuple(sorted((k, v.data_ptr()) for k, v in self.masks.items()))

    def on_phase_start(self, trainer: Trainer) -> None:
        self.masks = mask_ops.masks_to(self.masks, trainer.device)
        mask_ops.apply_masks(trainer.model, self.masks)

    def on_resume(self, trainer: Trainer) -> None:
        self.masks = mask_ops.masks_to(self.masks, trainer.device)  # checkpoints hold CPU tensors

    def before_step(self, trainer: Trainer) -> None:
        mask_ops.mask_gradients(trainer.model, self.masks)

    def after_step(self, trainer: Trainer) -> None:
        mask_ops.apply_masks(trainer.model, self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.cpu() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = dict(state.get("masks", {}))


def compiled_forward(
    model: nn.Module, mode: str | None, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training forward: ``model`` itself, or ``torch.compile(model, mode=mode)``.

    The compiled module shares the parameters, so optimizer steps, masks and checkpoints act
    on ``model`` as usual. "reduce-overhead" adds CUDA graphs on CUDA. Evaluation stays
    eager (other batch sizes, eval-mode BatchNorm and pruned copies would each recompile).
    """
    if mode is None:
        return model
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if device.type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if shutil.which(cxx) is None and shutil.which("clang++") is None:
            raise CompileUnavailableError(
                f"compile: {mode} on CPU needs a C++ compiler for TorchInductor, and neither "
                f"{cxx!r} nor 'clang++' is on PATH. Install one (e.g. g++) or set compile: false."
            )
    return torch.compile(model, mode=mode)


def step_mode(cuda_graphs: bool | str | None, device: torch.device,
              compile_mode: str | None) -> str:
    """How training steps run: "graph" (captured and replayed, the default on CUDA), "off"
    (eager), or "emulate" (the captured step's code eagerly with host-sync checks: tests)."""
    if cuda_graphs == "emulate":
        return "emulate"
    if cuda_graphs not in (None, True, False):
        raise ValueError(f"cuda_graphs must be true, false or emulate, got {cuda_graphs!r}")
    if device.type != "cuda" or cuda_graphs is False or compile_mode is not None:
        return "off"  # torch.compile's reduce-overhead brings its own CUDA graphs
    return "graph"


class Trainer:
    """Holds data, model and checkpoint state of one run folder and runs phases on it."""

    def __init__(
        self,
        spec: RunSpec,
        run_dir: Path,
        *,
        progress: bool | None = None,
        compile_mode: str | None = None,
        cuda_graphs: bool | str | None = None,
    ) -> None:
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "ckpt"
        self.device = resolve_device(spec.device)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.info = dataset_info(spec.dataset, image_size=spec.image_size, root=spec.data_root)
        self.train_data = load_split(
            spec.dataset, spec.data_root, "train", image_size=spec.image_size
        )
        self.test_data = load_split(spec.dataset, spec.data_root, "test", image_size=spec.image_size)
        bs, ebs = spec.optim.batch_size, spec.optim.eval_batch_size
        self.train_loader = BatchLoader(
            self.train_data, self.info, bs, train=True, device=self.device, seed=spec.seed
        )
        self.test_loader = BatchLoader(
            self.test_data, self.info, ebs, train=False, device=self.device
        )
        torch.manual_seed(spec.seed)
        self.model = build_model(
            spec.model, self.info.num_classes, in_channels=self.info.in_channels, width=spec.width
        ).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.model = self.model.to(memory_format=torch.channels_last)
        self.compile_mode = compile_mode
        self._train_forward = compiled_forward(self.model, compile_mode, self.device)
        self.step_mode = step_mode(cuda_graphs, self.device, compile_mode)
        self._graph: StepGraph | None = None
        self.graph_stats: dict[str, int] = {"captures": 0, "replays": 0, "eager": 0}
        self._scalars: dict[str, torch.Tensor] = {}
        self.tb = EventWriter(self.run_dir / "tb")  # TensorBoard scalars per epoch
        self.progress_every_s = PROGRESS_EVERY_S
        self._loss_sum = torch.zeros((), device=self.device)
        self._correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.epoch = 0  # global epochs completed
        self.phase: Phase | None = None
        self.phase_epoch = 0
        self.step = 0  # optimizer steps in the current phase
        self.history: list[dict[str, Any]] = []
        self.done: dict[str, dict[str, Any]] = {}
        self.layer_flops = flops.layer_flops(self.model, self.info.in_channels,
                                          self.info.image_size)
        self.train_flops = 0.0  # FLOPs of this run folder's training so far (flops.py)
        self._segment_start = time.perf_counter()
        self.started_at = time.time()  # this segment's start (Unix time)
        self._wall_before = 0.0  # seconds of earlier segments of an interrupted run
        self._ckpt: dict[str, Any] | None = self._load_checkpoint()
        if self._ckpt is not None:
            self.done = dict(self._ckpt.get("done", {}))
            self._wall_before = float(self._ckpt.get("wall_time_s", 0.0))
            self.train_flops = float(self._ckpt.get("train_flops", 0.0))

    def scalar(self, name: str, value: float) -> float | torch.Tensor:
        """A per-epoch number a hook's step reads: the float itself when steps run eagerly,
        a 0-d device tensor set to it when the step is replayed from a CUDA graph (call from
        ``on_epoch_start``, outside the step)."""
        if self._graph is None:
            return float(value)
        t = self._scalars.get(name)
        if t is None:
            t = self._scalars[name] = torch.zeros((), dtype=torch.float32, device=self.device)
        t.fill_(float(value))
        return t

    def add_flops(self, count: float) -> None:
        """Count extra work of a method into the run's training FLOPs (e.g. ART's pruned-copy
        evaluation on the training set)."""
        self.train_flops += float(count)

    def log_scalars(self, values: dict[str, float]) -> None:
        """Extra per-epoch numbers for TensorBoard at the current global epoch (hooks)."""
        self.tb.scalars(self.epoch, values)

    def wall_time(self) -> float:
        """Seconds this run has trained, over every segment of an interrupted run."""
        return self._wall_before + time.perf_counter() - self._segment_start

    # ----------------------------------------------------------------- checkpoints
    def _load_checkpoint(self) -> dict[str, Any] | None:
        tried = []
        for name in ("last.pt", "prev.pt"):
            path = self.ckpt_dir / name
            if not path.exists():
                continue
            tried.append(name)
            try:
                ckpt = safe_torch_load(path, map_location="cpu")
                if not isinstance(ckpt, dict) or ckpt.get("format") != 1:
                    raise CheckpointError(f"checkpoint {path} has an unknown layout")
                missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
                if missing:
                    raise CheckpointError(
                        f"checkpoint {path} lacks {', '.join(missing)}")
                own = self.model.state_dict()
                state = ckpt["model"]
                if not isinstance(state, dict) or set(state) != set(own) or any(
                        tuple(state[k].shape) != tuple(v.shape) for k, v in own.items()):
                    raise CheckpointError(f"checkpoint {path} holds weights of another model")
                saved, current = ckpt.get("spec"), self.spec.to_dict()
                if saved is not None and saved != current:  # e.g. the workflow's params changed
                    raise CheckpointError(
                        f"checkpoint {path} belongs to another run spec (differs in: "
                        f"{', '.join(spec_differences(saved, current))})"
                    )
            except CheckpointError as exc:
                log.warning("%s; trying the previous checkpoint", exc)
                continue
            log.info("resuming from %s (phase %s, epoch %d)", path, ckpt["phase"], ckpt["epoch"])
            return ckpt
        if tried:
            log.warning(
                "no usable checkpoint in %s (%s unreadable): training starts from scratch",
                self.ckpt_dir,
                " and ".join(tried),
            )
        return None

    def _save_checkpoint(self, hooks: Hooks) -> None:
        assert self.phase is not None and self.optimizer is not None
        state = {
            "format": 1,
            "spec": self.spec.to_dict(),
            "phase": self.phase.name,
            "phase_epoch": self.phase_epoch,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "hooks": hooks.state_dict(),
            "rng": torch.get_rng_state(),
            "step": self.step,
            "done": self.done,
            "history": self.history,
            "wall_time_s": self.wall_time(),
            "train_flops": self.train_flops,
        }
        last, prev = self.ckpt_dir / "last.pt", self.ckpt_dir / "prev.pt"
        if last.exists():
            last.replace(prev)
        atomic_torch_save(last, state)
        self.write_history()

    def write_history(self) -> None:
        """history.csv from the rows so far (atomic)."""
        atomic_write_csv(self.run_dir / "history.csv", HISTORY_COLUMNS, self.history)

    def save_snapshot(self, path: Path) -> None:
        """Model and optimizer state, e.g. the warm-up checkpoint ART starts from."""
        assert self.optimizer is not None
        atomic_torch_save(
            path,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch,
            },
        )

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: BatchLoader, epoch: int = 0) -> tuple[float, float]:
        """(mean CE loss, top-1 accuracy in %) of ``model`` in eval mode over ``loader``."""
        was_training = model.training
        model.eval()
        loader.set_epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        count = 0
        for x, y in loader:  # sums stay on the device: one host read at the end
            x = self._prep(x)
            with self._autocast():
                out = model(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            count += y.numel()
        model.train(was_training)
        return float(loss_sum) / max(count, 1), 100.0 * int(correct) / max(count, 1)

    def train_eval_loader(self, augment: bool) -> BatchLoader:
        """The training set in a fixed order, with or without augmentation, large batches."""
        return BatchLoader(
            self.train_data,
            self.info,
            self.spec.optim.eval_batch_size,
            train=False,
            augment=augment,
            device=self.device,
            seed=self.spec.seed,
        )

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> Any:
        enabled = self.spec.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # -------------------------------------------------------------------- training
    def _make_optimizer(self, phase: Phase) -> None:
        params = self.model.parameters()
        o = self.spec.optim
        if phase.optimizer_factory is not None:
            self.optimizer = phase.optimizer_factory(params)
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=phase.lr, momentum=o.momentum, weight_decay=o.weight_decay
            )
        if phase.scheduler_factory is not None:
            self.scheduler = phase.scheduler_factory(self.optimizer)
        elif phase.milestones:
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, milestones=list(phase.milestones), gamma=phase.gamma
            )
        else:
            self.scheduler = None

    def fit(
        self,
        phase: Phase,
        hooks: Hooks | None = None,
        on_start: Callable[[Trainer], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """Run (or resume, or skip if already done) one phase; returns its results.

        ``on_start`` runs only when the phase starts fresh: it prepares the model (load
        weights, prune) and may return an optimizer state dict to continue from.
        """
        hooks = hooks or Hooks()
        ck = self._ckpt
        if ck is not None and phase.name in self.done and ck["phase"] != phase.name:
            return self.done[phase.name]  # finished earlier; a later phase's checkpoint rules
        if ck is not None and ck["phase"] == phase.name:
            self.phase = phase
            self._make_optimizer(phase)
            assert self.optimizer is not None
            self.model.load_state_dict(ck["model"])
            hooks.load_state_dict(ck["hooks"])
            hooks.on_resume(self)
            self.history = list(ck["history"])
            self.epoch, self.phase_epoch = int(ck["epoch"]), int(ck["phase_epoch"])
            self.step = int(ck.get("step", 0))
            self._ckpt = None
            if phase.name in self.done:
                return self.done[phase.name]
            self.optimizer.load_state_dict(ck["optimizer"])
            if self.scheduler is not None and ck["scheduler"]:
                self.scheduler.load_state_dict(ck["scheduler"])
            torch.set_rng_state(ck["rng"])
            self._use_graph(hooks)
        else:
            self.start_phase(phase, hooks, on_start)
        self.tb.start(self.epoch)  # a resumed run's later points (before the kill) are dropped
        stopped = False
        while self.phase_epoch < phase.epochs and not stopped:
            row = self._train_epoch(phase, hooks)
            self.phase_epoch += 1
            self.epoch += 1
            self.history.append(row)
            self.tb.scalars(self.epoch, {
                "train/loss": row["train_loss"], "train/acc": row["train_acc"],
                "test/loss": row["test_loss"], "test/acc": row["test_acc"],
                "lr": row["lr"], "sparsity": row["sparsity"], "epoch_seconds": row["seconds"],
            })
            stopped = bool(hooks.end_epoch(self, row))
            if self.phase_epoch in phase.snapshots:
                self.save_snapshot(self.run_dir / phase.snapshots[self.phase_epoch])
            finished = stopped or self.phase_epoch >= phase.epochs
            if finished:
                result = {"epochs": self.phase_epoch, "stopped_early": stopped}
                result.update(hooks.on_phase_end(self))
                self.done[phase.name] = result
            self._save_checkpoint(hooks)
        if phase.name not in self.done:  # zero-epoch phase
            result = {"epochs": self.phase_epoch, "stopped_early": False}
            result.update(hooks.on_phase_end(self))
            self.done[phase.name] = result
        return self.done[phase.name]

    def start_phase(
        self,
        phase: Phase,
        hooks: Hooks,
        on_start: Callable[[Trainer], dict[str, Any] | None] | None = None,
    ) -> None:
        """Begin ``phase`` fresh: optimizer, ``on_start``, the hooks, the step mode. ``fit``
        calls it; benchmarks call it and then :meth:`train_iteration` directly."""
        self._ckpt = None
        self.phase = phase
        self._make_optimizer(phase)
        assert self.optimizer is not None
        self.phase_epoch = 0
        self.step = 0
        if phase.start_epoch is not None:
            self.epoch = phase.start_epoch
        opt_state = on_start(self) if on_start is not None else None
        if opt_state:
            self.optimizer.load_state_dict(opt_state)
            for group in self.optimizer.param_groups:  # the phase decides the lr
                group["lr"] = phase.lr
                group["initial_lr"] = phase.lr
        hooks.on_phase_start(self)
        self._use_graph(hooks)

    def begin_epoch(self, hooks: Hooks) -> None:
        """Host work before an epoch's first step: per-epoch scalars, zeroed sums."""
        assert self.optimizer is not None
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        if self._graph is not None:
            self._scalars["lr"].fill_(self.optimizer.param_groups[0]["lr"])
        hooks.on_epoch_start(self)
        self._loss_sum.zero_()
        self._correct.zero_()

    def train_iteration(self, x: torch.Tensor, y: torch.Tensor, hooks: Hooks) -> None:
        """One training iteration on a batch: the step (replayed from a CUDA graph where it
        is captured, else eager), then the hooks' host work."""
        x = self._prep(x)
        if self._graph is not None:
            self._graph.run(x, y, hooks, hooks.eager_iteration(self))
        else:
            assert self.optimizer is not None
            self.optimizer.zero_grad(set_to_none=True)
            self._step(x, y, hooks, False)
        hooks.after_iteration(self)
        self.step += 1

    def _report_progress(self, phase: Phase, done: int, n_batches: int, images: int,
                         t0: float) -> None:
        """A log line with the epoch's progress and ETAs (logs are not terminals: no bar)."""
        elapsed = time.perf_counter() - t0
        per_batch = elapsed / max(done, 1)
        left_epoch = (n_batches - done) * per_batch
        left_phase = left_epoch + (phase.epochs - self.phase_epoch - 1) * n_batches * per_batch
        log.info(
            "%s epoch %d (%d/%d): batch %d/%d, %.0f img/s, epoch ETA %s, phase ETA %s%s",
            phase.name, self.epoch, self.phase_epoch + 1, phase.epochs, done, n_batches,
            images / max(elapsed, 1e-9), hms(left_epoch), hms(left_phase),
            " (at most: the phase may stop early)" if phase.name == "art" else "",
        )

    def _use_graph(self, hooks: Hooks) -> None:
        """A fresh StepGraph for this phase's optimizer if steps may be captured, else None."""
        self._graph = None
        if self.step_mode == "off" or not graphable_optimizer(self.optimizer):
            return
        if not vars(type(hooks)).get("capture_safe", False):
            log.info("%s does not declare capture_safe: steps run eagerly", type(hooks).__name__)
            return
        self._graph = StepGraph(self._step, self.step_mode, self._zero_grads)
        self._scalars["lr"] = torch.zeros((), dtype=torch.float32, device=self.device)

    def _zero_grads(self, set_to_none: bool) -> None:
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _step(self, x: torch.Tensor, y: torch.Tensor, hooks: Hooks, graphed: bool) -> None:
        """The training step (eager, or recorded into a CUDA graph when ``graphed``): forward,
        loss, backward, the hooks, the optimizer update and the on-device sums."""
        assert self.optimizer is not None
        with self._autocast():
            out = self._train_forward(x)
            loss = F.cross_entropy(out.float(), y)
        extra = hooks.loss_term(self, self.model)
        total = loss if extra is None else loss + extra
        total.backward()
        if not hooks.replace_step(self):
            hooks.before_step(self)
            if graphed:
                sgd_update_(self.optimizer, self._scalars["lr"])
            else:
                self.optimizer.step()
            hooks.after_step(self)
        self._loss_sum += loss.detach() * y.numel()
        self._correct += (out.detach().argmax(1) == y).sum()

    def _train_epoch(self, phase: Phase, hooks: Hooks) -> dict[str, Any]:
        assert self.optimizer is not None
        t0 = time.perf_counter()
        model = self.model
        lr = self.optimizer.param_groups[0]["lr"]
        self.begin_epoch(hooks)
        count = 0
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = self.train_loader
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(
                batches,
                total=len(self.train_loader),
                desc=f"{phase.name} epoch {self.epoch}",
                leave=False,
                file=sys.stderr,
            )
            batches = bar
        n_batches = len(self.train_loader)
        next_report = t0 + self.progress_every_s
        for i, (x, y) in enumerate(batches, start=1):
            self.train_iteration(x, y, hooks)
            count += y.numel()
            if bar is None and time.perf_counter() >= next_report:
                self._report_progress(phase, i, n_batches, count, t0)
                next_report = time.perf_counter() + self.progress_every_s
        if bar is not None:
            bar.close()
        if self._graph is not None:
            self.graph_stats = {k: self.graph_stats.get(k, 0) + v
                                for k, v in self._graph.stats().items()}
            self._graph.captures = self._graph.replays = self._graph.eager = 0
        train_loss = float(self._loss_sum) / max(count, 1)
        if not math.isfinite(train_loss):
            raise DivergenceError(
                f"training diverged in phase {phase.name!r} at epoch {self.epoch}: the mean "
                f"training loss is {train_loss}. Likely cause: {hooks.divergence_hint()}."
            )
        if self.scheduler is not None:
            self.scheduler.step()
        test_loss, test_acc = self.evaluate(model, self.test_loader)
        nonzeros = mask_ops.layer_nonzeros(model)
        total = sum(n for _, n in nonzeros.values())
        sparsity = (total - sum(nz for nz, _ in nonzeros.values())) / total if total else 0.0
        epoch_flops = flops.TRAIN_FACTOR * flops.sparse_flops(
            self.layer_flops, flops.densities(nonzeros)) * count
        self.train_flops += epoch_flops
        row = {
            "phase": phase.name,
            "epoch": self.epoch,
            "phase_epoch": self.phase_epoch,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": 100.0 * int(self._correct) / max(count, 1),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "sparsity": sparsity,
            "train_gflops": epoch_flops / 1e9,
            "seconds": time.perf_counter() - t0,
        }
        log.info(
            "%s epoch %d (%d/%d): lr %.4g train loss %.4f acc %.2f | test loss %.4f acc %.2f"
            " | sparsity %.4f | %.1fs",
            phase.name,
            self.epoch,
            self.phase_epoch + 1,
            phase.epochs,
            lr,
            train_loss,
            row["train_acc"],
            test_loss,
            test_acc,
            sparsity,
            row["seconds"],
        )
        return row
