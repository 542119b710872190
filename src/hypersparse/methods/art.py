"""ART: Adaptive Regularized Training with the HyperSparse (or L1 / L2) regulariser [art].

Glandorf, Kaiser, Rosenhahn, "HyperSparse Neural Networks: Shifting Exploration to Exploitation
through Adaptive Regularization", ICCV 2023 workshops (arXiv 2308.07163); behaviour as in the
authors' code (GreenAutoML4FAS/HyperSparse: train.py, utils/art.py, utils/misc.py), see
PAPER_NOTES.md section 1.

Phases of one run folder:
1. ``art``: start from the dense run's ``snapshot_e{warmup_epochs}.pt`` (model and optimizer
   state, lr stays ``optim.lr``), global epochs ``warmup_epochs, warmup_epochs + 1, ...``; loss
   = CE + alpha_e * R(w) with alpha_e = lambda_init * eta^(e - warmup_epochs). After each epoch a
   copy is magnitude-pruned to exactly floor(kappa*N) zeros and its training accuracy (eval
   mode) feeds :class:`ArtSelector`, which picks the candidate and decides when to stop.
2. ``finetune``: the candidate's pruned weights with its mask fixed, fresh optimizer, the
   ``finetune`` schedule (160 epochs, [80, 120], 0.1).

Nothing a resumed run needs lives in the run folder's declared outputs (the workflow deletes
those of an unfinished job before rerunning it): everything ART needs mid-phase is in the
hooks' state dict; when ART ends, the candidate's pruned weights and the whole trace become
the phase's result, which every later checkpoint carries (``Trainer.done``). The trace files
are written once, when the run ends (or fails).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .. import flops
from .. import masks as mask_ops
from ..engine import Hooks, Phase, Trainer
from ..io import load_state_dict_checked
from ..regularizers import REGULARIZERS, HyperSparseGradient
from . import art_trace
from .base import Method, load_dense_weights, register

log = logging.getLogger("hypersparse")


@dataclasses.dataclass(frozen=True)
class ArtParams:
    """ART hyper-parameters; defaults are the authors' code defaults.

    - regularizer: "hs" (HyperSparse), "l1" (sum |w|) or "l2" (sum w^2), on all prunable weights.
    - lambda_init, eta: alpha_e = lambda_init * eta^(e - warmup_epochs), e the 0-based global
      epoch, constant within an epoch. The code's argument parser says 5e-6 (its README 5e-4).
    - warmup_epochs: dense epochs before ART; ART starts from the dense run's snapshot there.
    - window_half: b, the accuracy window holds the last 2b+1 pruned-copy accuracies.
    - eval_augmented: measure the pruned copy on augmented training data (the code iterates its
      training loader, so True); False uses the un-augmented training set.
    - max_art_epochs: guard; if reached without termination, the best candidate so far is
      fine-tuned and metrics say ``art.converged = false`` (the code loops forever).
    - select_against: when the window mean counts as "better". Code (utils/art.py): the window
      mean is compared with the current candidate's *own* pruned accuracy ("candidate_acc").
      Paper-text reading: with the best window mean so far ("best_mean").
    - stop_on: termination compares the dense running training accuracy of the epoch with the
      candidate's window mean recorded at selection ("window_mean", utils/art.py) or with the
      candidate's own accuracy ("candidate_acc", the earlier train.py).

    The window's "middle" entry is at index min(len - 1, b) as in the code (so with fewer than
    b+1 entries the newest); comparisons are strict (>), the best starts at 0. One deliberate
    difference: the code keeps |w| > the floor(kappa*N)-th smallest |w| (floor(kappa*N)+1
    zeros, more on ties); here the pruned copy has exactly floor(kappa*N) zeros (project contract).
    """

    regularizer: Literal["hs", "l1", "l2"] = "hs"
    lambda_init: float = 5e-6
    eta: float = 1.05
    warmup_epochs: int = 60
    window_half: int = 1
    eval_augmented: bool = True
    max_art_epochs: int = 200
    select_against: Literal["candidate_acc", "best_mean"] = "candidate_acc"
    stop_on: Literal["window_mean", "candidate_acc"] = "window_mean"

    def validate(self) -> None:
        """Reject values outside the ranges the schedule makes sense for."""
        if self.regularizer not in ("hs", "l1", "l2"):
            raise ValueError(f"regularizer must be hs, l1 or l2, got {self.regularizer!r}")
        if not (math.isfinite(self.lambda_init) and self.lambda_init >= 0):
            raise ValueError(f"lambda_init must be finite and >= 0, got {self.lambda_init}")
        if not (math.isfinite(self.eta) and self.eta >= 1):
            raise ValueError(f"eta must be >= 1 (alpha grows), got {self.eta}")
        if self.warmup_epochs < 1:
            raise ValueError(f"warmup_epochs must be >= 1, got {self.warmup_epochs}")
        if self.window_half < 0:
            raise ValueError(f"window_half must be >= 0, got {self.window_half}")
        if self.max_art_epochs < 1:
            raise ValueError(f"max_art_epochs must be >= 1, got {self.max_art_epochs}")


def alpha_at(p: ArtParams, epoch: int) -> float:
    """Regularisation strength of global epoch ``epoch`` (0-based): lambda_init * eta^(e - W)."""
    return p.lambda_init * p.eta ** float(epoch - p.warmup_epochs)


class ArtSelector:
    """ART's candidate selection and termination on a window of pruned-copy accuracies.

    push(epoch, acc) adds one epoch; when the window mean beats the reference (see
    ArtParams.select_against) the window's middle entry becomes the candidate. should_stop
    compares the candidate with the dense model's training accuracy.
    """

    def __init__(
        self,
        window_half: int = 1,
        select_against: str = "candidate_acc",
        stop_on: str = "window_mean",
    ) -> None:
        self.b = int(window_half)
        self.size = 2 * self.b + 1
        self.select_against = select_against
        self.stop_on = stop_on
        self.window: list[tuple[int, float]] = []
        self.candidate: dict[str, Any] | None = None  # {"epoch", "acc", "window_mean"}

    @property
    def window_mean(self) -> float:
        """Mean accuracy over the window (NaN while empty)."""
        if not self.window:
            return math.nan
        return sum(a for _, a in self.window) / len(self.window)

    def push(self, epoch: int, acc: float) -> dict[str, Any] | None:
        """Add one epoch's pruned accuracy; returns the (possibly new) candidate."""
        self.window.append((int(epoch), float(acc)))
        if len(self.window) > self.size:
            self.window.pop(0)
        mean = self.window_mean
        if self.candidate is None:
            ref = 0.0
        elif self.select_against == "candidate_acc":
            ref = self.candidate["acc"]
        else:
            ref = self.candidate["window_mean"]
        if mean > ref:
            e, a = self.window[min(len(self.window) - 1, self.b)]
            self.candidate = {"epoch": e, "acc": a, "window_mean": mean}
        return self.candidate

    def should_stop(self, dense_acc: float) -> bool:
        """True when the candidate beats the dense model's training accuracy of this epoch."""
        if self.candidate is None:
            return False
        key = "window_mean" if self.stop_on == "window_mean" else "acc"
        return bool(self.candidate[key] > dense_acc)

    def needed_epochs(self) -> set[int]:
        """Epochs whose pruned copy may still be (or is) the candidate.

        Entries left of the middle index never become the middle again, so only the window
        from index b on, the candidate, and the newest entry (the fallback when no epoch was
        ever selected) need their pruned weights kept.
        """
        keep = {e for e, _ in self.window[self.b :]}
        if self.window:
            keep.add(self.window[-1][0])
        if self.candidate is not None:
            keep.add(int(self.candidate["epoch"]))
        return keep

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {
            "window": [[e, a] for e, a in self.window],
            "candidate": dict(self.candidate) if self.candidate else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.window = [(int(e), float(a)) for e, a in state["window"]]
        self.candidate = dict(state["candidate"]) if state["candidate"] else None


class ArtHooks(Hooks):
    """The ART phase: regularised loss, per-epoch pruned evaluation, selection, trace."""

    capture_safe = True  # alpha is a Trainer.scalar; HS runs sync-free where steps are captured

    def __init__(self, p: ArtParams, kappa: float, work_dir: Path) -> None:
        self.p = p
        self.kappa = kappa
        self.work_dir = Path(work_dir)  # per-epoch top sets (under the run's ckpt/)
        self.selector = ArtSelector(p.window_half, p.select_against, p.stop_on)
        self.pruned: dict[int, dict[str, Any]] = {}  # epoch -> {"model", "masks"} (CPU)
        self.trace = art_trace.ArtTrace()
        self.stopped = False
        self.last: dict[str, Any] = {}  # the last epoch's numbers
        self._reg = REGULARIZERS[p.regularizer]
        # HS enters as a gradient added after the CE backward (same sum, no autograd round
        # trip, buffers kept across steps); L1 / L2 stay loss terms.
        self._hs = HyperSparseGradient() if p.regularizer == "hs" else None
        self._loader: Any = None
        self._alpha: float | torch.Tensor = 0.0

    def divergence_hint(self) -> str:
        return ("a learning rate or a regularisation strength (lambda_init, eta) that is too "
                "large")
    def _select_path(self, trainer: Trainer) -> None:
        if self._hs is not None and trainer.step_mode != "off":
            self._hs.sync_free = True  # the step may be captured: a_k found on the device

    def on_phase_start(self, trainer: Trainer) -> None:
        self._select_path(trainer)
        self.trace.start(trainer.model, self.kappa)

    def on_resume(self, trainer: Trainer) -> None:
        self._select_path(trainer)

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._alpha = trainer.scalar("alpha", alpha_at(self.p, trainer.epoch))

    def loss_term(self, trainer: Trainer, model: nn.Module) -> torch.Tensor | None:
        if self._hs is not None or (isinstance(self._alpha, float) and self._alpha == 0.0):
            return None
        return self._alpha * self._reg(mask_ops.prunable_weights(model), self.kappa)

    def before_step(self, trainer: Trainer) -> None:
        if self._hs is not None:
            self._hs.add_to_grads_(mask_ops.prunable_weights(trainer.model), self.kappa, self._alpha)

    def _eval_loader(self, trainer: Trainer) -> Any:
        if self._loader is None:
            self._loader = trainer.train_eval_loader(augment=self.p.eval_augmented)
        return self._loader

    @torch.no_grad()
    def end_epoch(self, trainer: Trainer, row: dict[str, Any]) -> bool:
        epoch = int(row["epoch"])
        model = trainer.model
        masks = mask_ops.model_masks_by_magnitude(model, self.kappa)
        pruned = copy.deepcopy(model)
        mask_ops.apply_masks(pruned, masks)
        loader = self._eval_loader(trainer)
        _, acc = trainer.evaluate(pruned, loader, epoch=epoch)
        kept = {k: float(m.float().mean()) for k, m in masks.items()}
        trainer.add_flops(flops.sparse_flops(trainer.layer_flops, kept) * loader.num_samples)
        cand = self.selector.push(epoch, acc)
        self.pruned[epoch] = {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in pruned.state_dict().items()},
            "masks": {k: v.to("cpu", copy=True) for k, v in masks.items()},
        }
        del pruned
        keep = self.selector.needed_epochs()
        self.pruned = {e: s for e, s in self.pruned.items() if e in keep}
        self.stopped = self.selector.should_stop(float(row["train_acc"]))
        self.last = {"epoch": epoch, "dense_train_acc": float(row["train_acc"])}
        a_k = self._hs.last_a_k if self._hs is not None else None
        trainer.log_scalars({
            "art/alpha": alpha_at(self.p, epoch), "art/pruned_train_acc": float(acc),
            "art/window_mean": self.selector.window_mean,
            **({"art/a_k": float(a_k)} if a_k is not None else {}),
        })
        self.trace.record(
            self.work_dir,
            {
                "epoch": epoch,
                "art_epoch": epoch - self.p.warmup_epochs,
                "alpha": alpha_at(self.p, epoch),
                "dense_train_acc": float(row["train_acc"]),
                "pruned_train_acc": float(acc),
                "window_mean": self.selector.window_mean,
                "candidate_epoch": None if cand is None else int(cand["epoch"]),
            },
            model,
            masks,
            self.kappa,
        )
        log.info(
            "art epoch %d: alpha %.3g, pruned train acc %.2f, window mean %.2f, candidate %s, "
            "dense train acc %.2f%s",
            epoch, alpha_at(self.p, epoch), acc, self.selector.window_mean,
            None if cand is None else cand["epoch"], row["train_acc"],
            " -> ART terminates" if self.stopped else "",
        )
        return self.stopped

    def final_candidate(self) -> dict[str, Any]:
        """The selected candidate, or (no epoch ever beat 0 %) the newest epoch."""
        cand = self.selector.candidate
        if cand is None:
            e, a = self.selector.window[-1]
            cand = {"epoch": e, "acc": a, "window_mean": self.selector.window_mean}
        return cand

    def summary(self) -> dict[str, Any]:
        """The ``art`` block of metrics.json."""
        cand = self.final_candidate()
        return {
            "epochs_used": len(self.trace.rows),
            "selected_epoch": int(cand["epoch"]),
            "terminated_epoch": int(self.last["epoch"]),
            "alpha_at_selection": alpha_at(self.p, int(cand["epoch"])),
            "converged": bool(self.stopped),
            "dense_train_acc_at_termination": float(self.last["dense_train_acc"]),
            "regularizer": self.p.regularizer,
            "window_mean_at_selection": float(cand["window_mean"]),
            "pruned_train_acc_at_selection": float(cand["acc"]),
        }

    def on_phase_end(self, trainer: Trainer) -> dict[str, Any]:
        summary = self.summary()
        if not summary["converged"]:
            log.warning(
                "ART did not terminate within max_art_epochs=%d; fine-tuning the best candidate "
                "so far (epoch %d); metrics record art.converged = false",
                self.p.max_art_epochs, summary["selected_epoch"],
            )
        sel = summary["selected_epoch"]
        state = self.pruned[sel]
        self.trace.set_iou(self.work_dir, art_trace.flat_mask(state["masks"], self.trace.layer_names))
        return {
            "art": summary,
            # carried by every later checkpoint: what fine-tuning and the trace files need
            "candidate": {"model": state["model"], "masks": state["masks"], "epoch": sel},
            "trace": self.trace_result(sel, summary["terminated_epoch"]),
        }

    def trace_result(self, selected: int | None, terminated: int | None) -> dict[str, Any]:
        """The trace so far as checkpointable data: CSV rows and the npz arrays as tensors."""
        arrays = self.trace.arrays(self.kappa, selected, terminated)
        return {"rows": [dict(r) for r in self.trace.rows], "arrays": art_trace.arrays_to_state(arrays)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "selector": self.selector.state_dict(),
            "pruned": {str(e): s for e, s in self.pruned.items()},
            "trace": self.trace.state_dict(),
            "stopped": self.stopped,
            "last": dict(self.last),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selector.load_state_dict(state["selector"])
        self.pruned = {int(e): s for e, s in state["pruned"].items()}
        self.trace.load_state_dict(state["trace"])
        self.stopped = bool(state["stopped"])
        self.last = dict(state["last"])


@register
class AdaptiveRegularizedTraining(Method):
    """Warm-up snapshot -> ART (growing regulariser, window selection) -> fixed-mask fine-tuning."""

    family = "art"
    Params = ArtParams
    extra_outputs = ("art_trace.csv", "art_trace.npz")
    figures = ("hs_gradient", "exploration", "art_termination", "magnitudes")

    def __init__(self, spec: Any, params: Any) -> None:
        super().__init__(spec, params)
        self._hooks: ArtHooks | None = None

    @classmethod
    def figure_order(cls, params: Any) -> int:
        """HyperSparse first, then L1 and L2 (the paper's order; hs_gradient shows HS)."""
        return ("hs", "l1", "l2").index(params.regularizer)

    @classmethod
    def dense_inputs(cls, params: Any) -> list[str]:
        return [f"snapshot_e{params.warmup_epochs}.pt"]

    @classmethod
    def dense_epochs_used(cls, params: Any, dense_epochs: int) -> int:
        return params.warmup_epochs  # ART starts from the warm-up snapshot

    @classmethod
    def estimated_epochs(cls, params: Any, dense: dict[str, Any], finetune: dict[str, Any],
                         kappa: float, art_epochs: int) -> int:
        """ART epochs (data-dependent: the assumption, at most max_art_epochs) + fine-tuning;
        the warm-up is the dense run's."""
        return min(art_epochs, params.max_art_epochs) + int(finetune["epochs"])

    @classmethod
    def snapshot_epochs(cls, params: Any) -> list[int]:
        return [params.warmup_epochs]

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        assert dense_dir is not None
        p, run_dir = self.p, trainer.run_dir
        hooks = ArtHooks(p, self.spec.kappa, trainer.ckpt_dir / art_trace.WORK_DIR)
        self._hooks = hooks
        snap_path = dense_dir / f"snapshot_e{p.warmup_epochs}.pt"

        def start(t: Trainer) -> dict[str, Any]:
            obj = load_dense_weights(t, snap_path)
            if int(obj.get("epoch", p.warmup_epochs)) != p.warmup_epochs:
                raise ValueError(
                    f"{snap_path} was saved after epoch {obj.get('epoch')}, "
                    f"not after warmup_epochs={p.warmup_epochs}"
                )
            return obj["optimizer"]

        phase = Phase("art", p.max_art_epochs, self.spec.optim.lr, start_epoch=p.warmup_epochs)
        result = trainer.fit(phase, hooks, on_start=start)
        self._art_result = result
        art = dict(result["art"])

        def candidate_masks(t: Trainer) -> mask_ops.Masks:
            cand = result["candidate"]
            load_state_dict_checked(t.model, cand["model"], "the ART candidate")
            return mask_ops.masks_to(cand["masks"], t.device)

        self.train_with_mask(trainer, candidate_masks)
        trace = result["trace"]
        arrays = art_trace.arrays_from_state(trace["arrays"])
        final_ws = mask_ops.prunable_weights(trainer.model)
        arrays["magnitudes_final"], arrays["magnitudes_top_final"] = art_trace.magnitudes_at(
            final_ws, art_trace.MAG_QUANTILES, arrays["top_quantiles"])
        art_trace.write_trace_files(run_dir, trace["rows"], arrays)
        return {"art": art}

    def write_failure_outputs(self, run_dir: Path) -> None:
        """Trace files with the epochs recorded before the failure (possibly none)."""
        run_dir = Path(run_dir)
        hooks = self._hooks
        done = getattr(self, "_art_result", None)
        if done is not None:  # ART finished, fine-tuning failed: the trace is complete
            trace = done["trace"]
            art_trace.write_trace_files(run_dir, trace["rows"], art_trace.arrays_from_state(trace["arrays"]))
        elif hooks is None:
            art_trace.write_trace_files(run_dir, [], art_trace.ArtTrace().arrays(self.spec.kappa, None, None))
        else:
            cand = hooks.selector.candidate
            trace = hooks.trace_result(
                None if cand is None else int(cand["epoch"]), hooks.last.get("epoch"))
            art_trace.write_trace_files(run_dir, trace["rows"], art_trace.arrays_from_state(trace["arrays"]))
