"""Pruning at initialisation, then sparse training from scratch [random, snip, grasp, synflow,
smart_ratio].

Each method computes a mask on the freshly seeded model (the Trainer seeds torch with
spec.seed before building it), then trains it with that fixed mask on the ``finetune``
schedule (160 epochs, steps [80, 120], the dense model's optimizer) in one phase "train".
The mask is computed only when the phase starts fresh; on resume it comes back from the
checkpointed MaskHooks state. Scoring batches are the first ``num_batches`` batches of the
training loader at epoch 0 (deterministic, augmented as in training). The scores themselves
are in :mod:`hypersparse.methods.pai_scores`.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Literal

import torch

from ..engine import Trainer
from ..masks import Masks
from ..models import VGG
from . import pai_scores as S
from .base import Method, register


def scoring_batches(trainer: Trainer, num_batches: int) -> list[S.Batch]:
    """The first ``num_batches`` training batches of epoch 0 (same every run of a seed)."""
    trainer.train_loader.set_epoch(0)
    return list(itertools.islice(iter(trainer.train_loader), num_batches))


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


class _PruneAtInit(Method):
    """Shared driver: ``masks(trainer)`` at initialisation, then fixed-mask training."""

    def masks(self, trainer: Trainer) -> Masks:
        """The mask of this method for ``trainer.model`` at initialisation."""
        raise NotImplementedError

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from spec.seed (the method's own randomness)."""
        return torch.Generator().manual_seed(self.spec.seed)

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        self.train_with_mask(trainer, self.masks, name="train")
        return {}


@register
class RandomPruning(_PruneAtInit):
    """Random pruning at init: exactly floor(kappa*N) weights drawn uniformly over all layers.

    The naive baseline of e.g. Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019
    and Su et al., NeurIPS 2020 (layer densities all about 1-kappa).
    """

    family = "random"

    def masks(self, trainer: Trainer) -> Masks:
        return S.random_masks(trainer.model, self.spec.kappa, self.generator())


@dataclasses.dataclass(frozen=True)
class SnipParams:
    """SNIP: gradients from ``num_batches`` training batches (the paper uses one mini-batch)."""

    num_batches: int = 1

    def validate(self) -> None:
        _positive("num_batches", self.num_batches)


@register
class Snip(_PruneAtInit):
    """SNIP: keep the (1-kappa)N largest |dCE/dw * w| at initialisation.

    Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
    ICLR 2019. (The paper's normalisation by the sum of scores does not change the ranking.)
    """

    family = "snip"
    Params = SnipParams

    def masks(self, trainer: Trainer) -> Masks:
        scores = S.snip_scores(trainer.model, scoring_batches(trainer, self.p.num_batches))
        return S.masks_keep_highest(scores, self.spec.kappa)


@dataclasses.dataclass(frozen=True)
class GraspParams:
    """GraSP defaults from the authors' code: T = 200, Xavier re-init of the scoring classifier.

    The authors draw 10 samples per class (CIFAR-10) and split them into two halves that act
    as two batches; here ``num_batches`` = 2 training batches play that role (128 images at
    batch size 64, close to the authors' 100).
    """

    num_batches: int = 2
    temperature: float = 200.0
    reinit_linear: bool = True

    def validate(self) -> None:
        _positive("num_batches", self.num_batches)
        _positive("temperature", self.temperature)


@register
class Grasp(_PruneAtInit):
    """GraSP: remove the floor(kappa*N) largest -w * (H g) scores (keeps gradient flow).

    Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by Preserving Gradient
    Flow", ICLR 2020. Loss CE(f(x)/T, y); g summed over the scoring batches and held constant;
    Hg = d(g . dL_b/dw)/dw summed over batches (double back-propagation), BN in train mode.
    """

    family = "grasp"
    Params = GraspParams

    def masks(self, trainer: Trainer) -> Masks:
        scores = S.grasp_scores(
            trainer.model,
            scoring_batches(trainer, self.p.num_batches),
            self.p.temperature,
            self.p.reinit_linear,
            self.generator(),
        )
        return S.masks_remove_highest(scores, self.spec.kappa)


@dataclasses.dataclass(frozen=True)
class SynflowParams:
    """SynFlow: 100 pruning rounds (paper); float64 scoring avoids overflow of R in deep nets."""

    iterations: int = 100
    double: bool = True

    def validate(self) -> None:
        _positive("iterations", self.iterations)


@register
class Synflow(_PruneAtInit):
    """SynFlow: iterative data-free pruning by synaptic flow |w * dR/dw|.

    Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by iteratively
    conserving synaptic flow", NeurIPS 2020. Every parameter and buffer replaced by its
    absolute value, BN in eval mode (running stats at init: mean 0, var 1), input all ones of
    the data shape, R = sum of the logits; round k of T keeps (1-kappa)^(k/T) of the weights
    (exponential schedule), scores recomputed with the previous mask applied. The trained
    model keeps its original signed weights.
    """

    family = "synflow"
    Params = SynflowParams

    def masks(self, trainer: Trainer) -> Masks:
        info = trainer.info
        shape = (info.in_channels, info.image_size, info.image_size)
        return S.synflow_masks(
            trainer.model, shape, self.spec.kappa, self.p.iterations, self.p.double
        )


@dataclasses.dataclass(frozen=True)
class SmartRatioParams:
    """Smart-Ratio: classifier keep ratio 0.3 (authors' default); VGG index decay on 'auto'."""

    linear_keep_ratio: float = 0.3
    index_decay: Literal["auto", "on", "off"] = "auto"

    def validate(self) -> None:
        if not 0.0 <= self.linear_keep_ratio <= 1.0:
            raise ValueError(f"linear_keep_ratio must be in [0, 1], got {self.linear_keep_ratio}")


@register
class SmartRatio(_PruneAtInit):
    """Smart-Ratio random tickets: random masks with preset layer-wise keep ratios.

    Su, Chen, Cai, Wu, Gao, Wang, Lee, "Sanity-Checking Pruning Methods: Random Tickets can
    Win the Jackpot", NeurIPS 2020. For the L prunable layers in module order (shortcuts
    included), layer l gets p_l proportional to (L-l+1)^2 + (L-l+1) (k^2 + k for the k-th layer
    from the end), divided by l^2 for VGG (index_decay); the classifier keeps
    floor(0.3 n_fc); one factor scales the others to (1-kappa)N kept in total; ratios above 1
    are capped and the excess moves on to the next layers. Counts per layer: largest-remainder
    rounding of p_l n_l to an exact global total; the positions are uniformly random. Where
    the classifier's fixed budget alone reaches (1-kappa)N it gets half of it instead (see
    :func:`~hypersparse.methods.pai_scores.smart_ratio_densities`).
    """

    family = "smart_ratio"
    Params = SmartRatioParams

    def masks(self, trainer: Trainer) -> Masks:
        decay = self.p.index_decay
        index_decay = isinstance(trainer.model, VGG) if decay == "auto" else decay == "on"
        return S.smart_ratio_masks(
            trainer.model, self.spec.kappa, self.generator(), self.p.linear_keep_ratio, index_decay
        )
