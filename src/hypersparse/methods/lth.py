"""Lottery tickets by iterative magnitude pruning with weight rewinding [lth].

Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks",
ICLR 2019 (iterative magnitude pruning, IMP); Frankle, Dziugaite, Roy & Carbin, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", ICML 2020 (rewinding to an early iterate).

Procedure (open_lth's ``sparse_global`` strategy): the dense run is the first training round.
Each round r = 1..R prunes ceil(``prune_fraction`` x the weights still alive) by global
magnitude among the live weights (masks only shrink), rewinds the survivors, BatchNorm
statistics and all other state to the dense run's epoch-``rewind_epoch`` snapshot, and
retrains with the mask fixed. The last round prunes to exactly floor(kappa*N) zeros, so
R is about ceil(log(1-kappa) / log(1-prune_fraction)) (28 rounds at 99.8%).

Which layers: every Conv2d/Linear weight, except that open_lth's VGG models do not prune the
classifier (``pruning_layers_to_ignore='fc.weight'``); ``ignore_classifier: auto`` follows that
(VGG: kept dense; ResNet: pruned), ``on``/``off`` force it. The alive count that the 20% is
taken of includes the ignored classifier, as open_lth's mask does. Where kappa cannot be
reached with the classifier dense (e.g. VGG-19 on CIFAR-100 at 99.8%), the classifier's
smallest weights are pruned last, only as many as needed, with a warning and
``lth.classifier_zeros`` in metrics.json. Deviation: open_lth keeps |w| > the sorted value at
index ceil(...), which prunes one weight more per round (and all ties); here the count is exact.

Defaults: ``rewind_epoch = 5``. Frankle et al. (2020) find ResNet-20 on CIFAR-10 stable to SGD
noise from iteration ~2000 at batch 128 (about 3% of training), i.e. about 5 CIFAR epochs.
``round_schedule = "rewind"`` retrains from the rewind point to the end of the dense schedule
(dense epochs - rewind_epoch, milestones shifted, lr as it was at the rewind epoch), as that
paper does; ``"finetune"`` uses the config's fine-tuning schedule for every round instead.
Momentum is not rewound (a fresh SGD optimizer per round).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Literal

import torch

from .. import masks as mask_ops
from ..engine import MaskHooks, Phase, Trainer
from ..models import VGG
from .base import Method, load_dense_weights, register

log = logging.getLogger("hypersparse")


@dataclasses.dataclass(frozen=True)
class LTHParams:
    """IMP with rewinding: 20% of the remaining weights per round, rewind to epoch 5;
    the classifier of VGG models is not pruned (open_lth)."""

    prune_fraction: float = 0.2
    rewind_epoch: int = 5
    round_schedule: Literal["rewind", "finetune"] = "rewind"
    ignore_classifier: Literal["auto", "on", "off"] = "auto"

    def validate(self) -> None:
        """Reject fractions outside (0, 1) and negative rewind epochs."""
        if not 0.0 < self.prune_fraction < 1.0:
            raise ValueError(f"prune_fraction must be in (0, 1), got {self.prune_fraction}")
        if self.rewind_epoch < 0:
            raise ValueError(f"rewind_epoch must be >= 0, got {self.rewind_epoch}")


def num_rounds(kappa: float, prune_fraction: float) -> int:
    """About ceil(log(1-kappa)/log(1-p)) rounds reach kappa (>= 1); the exact count for N
    weights is ``len(round_zeros(kappa, p, N))``, at most this."""
    if kappa <= 0.0:
        return 1
    exact = math.log(1.0 - kappa) / math.log(1.0 - prune_fraction)
    return max(1, math.ceil(exact - 1e-9))  # 1e-9: kappa = 1 - 0.8^r gives exactly r


def round_zeros(kappa: float, prune_fraction: float, n: int) -> list[int]:
    """Zeros after each round: z_r = z_(r-1) + ceil(p (N - z_(r-1))) (open_lth), until
    floor(kappa N) is reached; the last round stops exactly there."""
    target = mask_ops.target_zeros(kappa, n)
    out: list[int] = []
    z = 0
    while True:
        z = min(z + math.ceil(prune_fraction * (n - z) - 1e-9), target)
        out.append(z)
        if z >= target:
            return out


def classifier_name(model: torch.nn.Module) -> str | None:
    """Parameter name of the last Linear layer's weight (the classifier), if any."""
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return names[-1] if names else None


def shrink_masks(
    model: torch.nn.Module, zeros: int, spared: frozenset[str] | set[str] = frozenset()
) -> mask_ops.Masks:
    """Global magnitude masks with ``zeros`` zeros that never revive a zero weight; layers in
    ``spared`` are pruned only once every other live weight is gone."""
    named = mask_ops.prunable_named_weights(model)
    n = sum(w.numel() for _, w in named)
    # Weights already pruned (exactly zero) score -1, below every live |w|; spared layers
    # score above every other layer's weight.
    lift = 1.0 + max(float(w.detach().abs().max()) for _, w in named) if spared else 0.0
    scores = [
        (k, torch.where(w != 0, w.detach().abs() + (lift if k in spared else 0.0), -1.0))
        for k, w in named
    ]
    return mask_ops.topk_masks_from_scores(scores, n - zeros)


@register
class LotteryTicket(Method):
    """Iterative magnitude pruning with rewinding, starting from the dense run."""

    family = "lth"
    Params = LTHParams

    @classmethod
    def dense_inputs(cls, params: Any) -> list[str]:
        return ["model.pt", f"snapshot_e{params.rewind_epoch}.pt"]

    @classmethod
    def snapshot_epochs(cls, params: Any) -> list[int]:
        return [params.rewind_epoch]

    @classmethod
    def config_problems(cls, params: Any, dense: dict[str, Any], finetune: dict[str, Any]
                        ) -> list[str]:
        problems = super().config_problems(params, dense, finetune)
        if params.round_schedule == "rewind" and params.rewind_epoch >= int(dense["epochs"]):
            problems.append(
                f"rewind_epoch {params.rewind_epoch} leaves no epoch to retrain in a dense "
                f"schedule of {dense['epochs']} epochs: use a smaller rewind_epoch"
            )
        return problems

    @classmethod
    def estimated_epochs(cls, params: Any, dense: dict[str, Any], finetune: dict[str, Any],
                         kappa: float, art_epochs: int) -> int:
        per_round = (int(finetune["epochs"]) if params.round_schedule == "finetune"
                     else max(int(dense["epochs"]) - params.rewind_epoch, 0))
        return num_rounds(kappa, params.prune_fraction) * per_round

    def round_phase(self, r: int) -> Phase:
        """The training schedule of round ``r`` (1-based)."""
        if self.p.round_schedule == "finetune":
            return self.finetune_phase(f"round{r}")
        d, k = self.spec.dense, self.p.rewind_epoch
        lr = self.spec.optim.lr * d.gamma ** sum(1 for m in d.milestones if m <= k)
        milestones = tuple(m - k for m in d.milestones if m > k)
        return Phase(f"round{r}", max(d.epochs - k, 0), lr, milestones, d.gamma)

    def spared_layers(self, model: torch.nn.Module) -> set[str]:
        """The layers open_lth does not prune: the classifier of VGG models (on ``auto``)."""
        ignore = self.p.ignore_classifier
        if ignore == "auto":
            ignore = "on" if isinstance(model, VGG) else "off"
        name = classifier_name(model)
        return {name} if ignore == "on" and name is not None else set()

    def start_round(self, trainer: Trainer, r: int, zeros: int, dense_dir: Path) -> mask_ops.Masks:
        """Prune the current (or, in round 1, the dense final) weights, then rewind survivors."""
        if r == 1:
            load_dense_weights(trainer, dense_dir / "model.pt")
        spared = self.spared_layers(trainer.model)
        masks = shrink_masks(trainer.model, zeros, spared)
        cut = sum(int((~masks[k]).sum()) for k in spared)
        if cut:
            log.warning(
                "LTH round %d: kappa=%g cannot be reached with the classifier dense; %d of its "
                "weights are pruned (open_lth would not prune it)", r, self.spec.kappa, cut
            )
        load_dense_weights(trainer, dense_dir / f"snapshot_e{self.p.rewind_epoch}.pt")
        mask_ops.apply_masks(trainer.model, mask_ops.masks_to(masks, trainer.device))
        return masks

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        assert dense_dir is not None
        n = mask_ops.num_prunable(trainer.model)
        zeros = round_zeros(self.spec.kappa, self.p.prune_fraction, n)
        rounds = len(zeros)
        per_round = self.round_phase(1).epochs
        total = self.spec.dense.epochs + rounds * per_round
        log.warning(
            "LTH to kappa=%g: %d rounds x %d epochs = %d retraining epochs (%d with the dense run)",
            self.spec.kappa,
            rounds,
            per_round,
            rounds * per_round,
            total,
        )
        for r, z in enumerate(zeros, start=1):
            hooks = MaskHooks()

            def start(t: Trainer, r: int = r, z: int = z, hooks: MaskHooks = hooks) -> None:
                hooks.masks = self.start_round(t, r, z, dense_dir)

            trainer.fit(self.round_phase(r), hooks, on_start=start)
        spared = self.spared_layers(trainer.model)
        named = dict(mask_ops.prunable_named_weights(trainer.model))
        return {
            "lth": {
                "rounds": rounds,
                "epochs_per_round": per_round,
                "retrain_epochs": rounds * per_round,
                "total_epochs": total,
                "zeros_per_round": zeros,
                "sparsity_per_round": [z / n for z in zeros],
                "rewind_epoch": self.p.rewind_epoch,
                "spared_layers": sorted(spared),
                "classifier_zeros": mask_ops.count_zeros(named[k] for k in spared),
            }
        }
