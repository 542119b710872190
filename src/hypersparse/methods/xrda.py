"""Compressed-sensing sparse training with xRDA [xrda], and xRDA pruned to kappa [xrda_at_kappa].

Siegel, Chen, Zhang, Xu, "Training Sparse Neural Networks using Compressed Sensing",
arXiv 2008.09661 (PAPER_NOTES.md section 2). xRDA trains from random initialisation with an
adaptively weighted l1 soft threshold (:class:`hypersparse.optim_xrda.XRDA`); its sparsity is
emergent (set by ``lam``), so ``xrda`` runs once, at kappa 0. ``xrda_at_kappa`` gives xRDA a
row at every kappa: it prunes the xRDA result globally by magnitude to exactly floor(kappa*N)
zeros and fine-tunes it with the fixed mask on the ``finetune`` schedule.

As in the authors' scripts, both train at batch size 128 (``optim_defaults``; the grid's 64
would double the steps and the growth of the accumulated threshold B per epoch) and use
tau = tau_b = 10.0 for VGG-19 on CIFAR-10, 9.5 otherwise (``tau: null``).

Trade-off of ``xrda_at_kappa``: it trains its own xRDA phase inside its run folder (phase
"xrda", then "finetune"), so the xRDA training is repeated once per kappa, but a run depends
on nothing but its spec. Reusing the ``xrda`` run's model.pt would need a declared input from
a non-dense run folder (the workflow wires only dense run folders today).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import nn

from .. import masks as mask_ops
from ..engine import Hooks, Phase, Trainer
from ..optim_xrda import XRDA
from .base import Method, register

log = logging.getLogger("hypersparse")


@dataclasses.dataclass(frozen=True)
class XRDAParams:
    """xRDA hyper-parameters; defaults are the authors' CIFAR unstructured scripts."""

    epochs: int = 600
    h0: float = 1.0  # initial step size (0.25 for ResNet-56 in the paper)
    tau: float | None = None  # momentum time scale; None: the authors' (see reference_tau)
    tau_b: float | None = None  # time scale of the running average of |w|; None: = tau
    lam: float = 1e-6  # l1 strength: sets the emergent sparsity
    M: float = 500.0  # largest l1 weight (for the smallest running magnitudes)
    weight_decay: float = 5e-4

    def validate(self) -> None:
        """Reject values the update is undefined for."""
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.h0 <= 0 or (self.tau or 1) <= 0 or (self.tau_b or 1) <= 0:
            raise ValueError("h0, tau and tau_b must be positive")
        if self.lam < 0 or self.weight_decay < 0:
            raise ValueError("lam and weight_decay must be >= 0")
        if self.M < 1:
            raise ValueError(f"M must be >= 1, got {self.M}")


def reference_tau(dataset: str, model: str) -> float:
    """The authors' momentum time scale: 10.0 in their VGG-19 CIFAR-10 script, else 9.5."""
    return 10.0 if (dataset, model) == ("cifar10", "vgg19") else 9.5


def resolved_taus(p: XRDAParams, dataset: str, model: str) -> tuple[float, float]:
    """(tau, tau_b) of a run: the given values, else the authors' for this data set and model."""
    tau = p.tau if p.tau is not None else reference_tau(dataset, model)
    return tau, (p.tau_b if p.tau_b is not None else tau)


def _zero_count(model: nn.Module) -> tuple[int, int]:
    """(exact zeros, N) over the prunable weights of ``model``."""
    ws = mask_ops.prunable_weights(model)
    return mask_ops.count_zeros(ws), sum(w.numel() for w in ws)


class _XRDAStats(Hooks):
    """Reports the emergent sparsity at the end of the xRDA phase (kept in the checkpoint)."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def on_phase_end(self, trainer: Trainer) -> dict[str, Any]:
        zeros, n = _zero_count(trainer.model)
        return {
            "iterations": self.iterations,
            "num_zero": zeros,
            "num_prunable": n,
            "sparsity": zeros / n if n else 0.0,
        }


def train_xrda(trainer: Trainer, p: XRDAParams, name: str = "xrda") -> dict[str, Any]:
    """Run (or resume) the xRDA phase from the trainer's seeded random init; returns its stats."""
    K = p.epochs * len(trainer.train_loader)
    tau, tau_b = resolved_taus(p, trainer.spec.dataset, trainer.spec.model)

    def make(params: Any) -> XRDA:
        return XRDA(
            params,
            K=K,
            h0=p.h0,
            tau=tau,
            tau_b=tau_b,
            lam=p.lam,
            M=p.M,
            weight_decay=p.weight_decay,
        )

    phase = Phase(name, p.epochs, p.h0, start_epoch=0, optimizer_factory=make)
    res = trainer.fit(phase, _XRDAStats(K))
    return {**res, "tau": tau, "tau_b": tau_b, "batch_size": trainer.spec.optim.batch_size}


@register
class XRDAMethod(Method):
    """xRDA from random init for ``epochs`` epochs; the sparsity it reaches is the result."""

    family = "xrda"
    Params = XRDAParams
    exact_sparsity = False
    needs_kappa = False
    optim_defaults = {"batch_size": 128}  # the authors' scripts

    @classmethod
    def estimated_epochs(cls, params: Any, dense: dict[str, Any], finetune: dict[str, Any],
                         kappa: float, art_epochs: int) -> int:
        return params.epochs

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        res = train_xrda(trainer, self.p)
        keys = ("iterations", "num_zero", "sparsity", "tau", "tau_b", "batch_size")
        return {"xrda": {k: res[k] for k in keys}}


@register
class XRDAAtKappa(Method):
    """xRDA, then global magnitude pruning to exactly floor(kappa*N) zeros and fine-tuning.

    If xRDA already has more than floor(kappa*N) zeros, the mask keeps some zero weights
    (ties broken by position) and fine-tuning lets them grow back; the count is then exact
    unless such a weight gets an exactly zero gradient throughout (e.g. a dead channel, or
    a classifier thresholded to all zeros by a too large ``lam``, which stops every
    gradient), which the runner's ``sparsity_ok`` reports; choose ``lam`` so that xRDA's
    sparsity stays below the smallest kappa.
    """

    family = "xrda_at_kappa"
    Params = XRDAParams
    optim_defaults = {"batch_size": 128}  # the authors' xRDA scripts (fine-tuning too)

    @classmethod
    def estimated_epochs(cls, params: Any, dense: dict[str, Any], finetune: dict[str, Any],
                         kappa: float, art_epochs: int) -> int:
        return params.epochs + int(finetune["epochs"])

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        res = train_xrda(trainer, self.p)
        target = mask_ops.target_zeros(self.spec.kappa, res["num_prunable"])
        if res["num_zero"] > target:
            log.warning(
                "xRDA reached %d zeros, more than the %d kappa=%g asks for: lower lam so that "
                "kept zero weights need not grow back",
                res["num_zero"],
                target,
                self.spec.kappa,
            )
        self.train_with_mask(
            trainer, lambda t: mask_ops.model_masks_by_magnitude(t.model, self.spec.kappa)
        )
        return {
            "xrda": {
                "iterations": res["iterations"],
                "tau": res["tau"],
                "tau_b": res["tau_b"],
                "batch_size": res["batch_size"],
                "zeros_before_pruning": res["num_zero"],
                "sparsity_before_pruning": res["sparsity"],
                "over_sparse": res["num_zero"] > target,
            }
        }
