"""Pruning at initialisation, then sparse training from scratch [random, snip, grasp, synflow,
smart_ratio].

Each method computes a mask on the freshly seeded model (the Trainer seeds torch with
spec.seed before building it), then trains it with that fixed mask on the ``finetune``
schedule (160 epochs, steps [80, 120], the dense model's optimizer) in one phase "train".
The mask is computed only when the phase starts fresh; on resume it comes back from the
checkpointed MaskHooks state. SNIP and GraSP score on class-balanced data as the
sanity-checking-pruning code base (Su et al. 2020) that the paper's baselines come from:
per iteration, a fresh shuffled and augmented pass over the training set yields the first
``samples_per_class`` images of every class, concatenated class by class (10 per class and
one iteration; 1 per class and 10 iterations for Tiny ImageNet and ResNets deeper than 32).
``scoring_data: batches`` uses the first ``num_batches`` training batches instead. The scores
themselves are in :mod:`hypersparse.methods.pai_scores`.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Literal

import torch

from ..engine import Trainer
from ..masks import Masks
from ..models import VGG, parse_model_name
from . import pai_scores
from .base import Method, register


def scoring_batches(trainer: Trainer, num_batches: int) -> list[pai_scores.Batch]:
    """The first ``num_batches`` training batches of epoch 0 (same every run of a seed)."""
    trainer.train_loader.set_epoch(0)
    return list(itertools.islice(iter(trainer.train_loader), num_batches))


def class_balanced_batch(trainer: Trainer, samples_per_class: int, iteration: int = 0
                         ) -> pai_scores.Batch:
    """The reference's scoring batch: the first ``samples_per_class`` images of each class in
    a shuffled, augmented pass over the training set (pass ``iteration``), class by class.

    Raises ValueError when a class has fewer images than asked for (the reference would loop).
    """
    loader = trainer.train_loader
    num_classes = trainer.info.num_classes
    counts = torch.bincount(loader.labels.cpu(), minlength=num_classes)
    short = [c for c in range(num_classes) if int(counts[c]) < samples_per_class]
    if short:
        raise ValueError(
            f"scoring needs {samples_per_class} training images per class, but class(es) "
            f"{short[:5]} have fewer: lower samples_per_class"
        )
    loader.set_epoch(-1 - iteration)  # a shuffle of its own, not one of the training epochs
    xs: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
    need = [samples_per_class] * num_classes
    left = num_classes
    for x, y in loader:
        for i, c in enumerate(y.tolist()):
            if need[c] > 0:
                xs[c].append(x[i : i + 1])
                need[c] -= 1
                left -= need[c] == 0
        if left == 0:
            break
    x = torch.cat([t for per_class in xs for t in per_class])
    y = torch.repeat_interleave(
        torch.arange(num_classes, device=x.device), samples_per_class
    )
    return x, y


def reference_scoring_size(dataset: str, model: str) -> tuple[int, int]:
    """(samples per class, iterations) of the sanity-checking-pruning code for SNIP/GraSP."""
    family, depth = parse_model_name(model)
    if dataset == "tinyimagenet" or (family == "resnet" and depth > 32):
        return 1, 10
    return 10, 1


@dataclasses.dataclass(frozen=True)
class ScoringData:
    """Which training data SNIP and GraSP score on (see the module docstring)."""

    scoring_data: Literal["class_balanced", "batches"] = "class_balanced"
    samples_per_class: int | None = None  # None: the reference's choice for data set + model
    iterations: int | None = None  # None: the reference's choice
    num_batches: int = 1  # with scoring_data: batches

    def validate(self) -> None:
        _positive("num_batches", self.num_batches)
        for name in ("samples_per_class", "iterations"):
            v = getattr(self, name)
            if v is not None:
                _positive(name, v)

    def batches(self, trainer: Trainer, split_halves: bool = False) -> list[pai_scores.Batch]:
        """The scoring batches; GraSP (``split_halves``) splits each class-balanced batch in
        two halves as the reference does (first half: the lower class indices)."""
        if self.scoring_data == "batches":
            return scoring_batches(trainer, self.num_batches)
        per_class, iters = reference_scoring_size(trainer.spec.dataset, trainer.spec.model)
        per_class = self.samples_per_class or per_class
        iters = self.iterations or iters
        out: list[pai_scores.Batch] = []
        for it in range(iters):
            x, y = class_balanced_batch(trainer, per_class, it)
            if split_halves:
                h = len(y) // 2
                out += [(x[:h], y[:h]), (x[h:], y[h:])]
            else:
                out.append((x, y))
        return out


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


class PruneAtInit(Method):
    """Pruning at initialisation, the base of every such method (as in Synaptic-Flow): score
    the freshly seeded model, keep the (1-kappa)N highest scores globally (exact count, ties
    by position), then train with that fixed mask on the ``finetune`` schedule. A new scoring
    method implements :meth:`score`; one that builds its mask otherwise overrides
    :meth:`masks`."""

    def score(self, trainer: Trainer) -> pai_scores.Scores:
        """(prunable weight name, score tensor of its shape) for ``trainer.model``."""
        raise NotImplementedError

    def masks(self, trainer: Trainer) -> Masks:
        """The mask of this method for ``trainer.model`` at initialisation."""
        return pai_scores.masks_keep_highest(self.score(trainer), self.spec.kappa)

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from spec.seed (the method's own randomness)."""
        return torch.Generator().manual_seed(self.spec.seed)

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        self.train_with_mask(trainer, self.masks, name="train")
        return {}


@register
class RandomPruning(PruneAtInit):
    """Random pruning at init: exactly floor(kappa*N) weights drawn uniformly over all layers.

    The naive baseline of e.g. Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019
    and Su et al., NeurIPS 2020 (layer densities all about 1-kappa).
    """

    family = "random"

    def masks(self, trainer: Trainer) -> Masks:
        return pai_scores.random_masks(trainer.model, self.spec.kappa, self.generator())


@dataclasses.dataclass(frozen=True)
class SnipParams(ScoringData):
    """SNIP: gradients of class-balanced scoring data (see :class:`ScoringData`)."""


@register
class Snip(PruneAtInit):
    """SNIP: keep the (1-kappa)N largest |dCE/dw * w| at initialisation.

    Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
    ICLR 2019. (The paper's normalisation by the sum of scores does not change the ranking.)
    """

    family = "snip"
    Params = SnipParams

    def score(self, trainer: Trainer) -> pai_scores.Scores:
        return pai_scores.snip_scores(trainer.model, self.p.batches(trainer))


@dataclasses.dataclass(frozen=True)
class GraspParams(ScoringData):
    """GraSP defaults from the authors' code: T = 200, Xavier re-init of the scoring classifier;
    class-balanced scoring data split into two halves per iteration (see :class:`ScoringData`).
    """

    num_batches: int = 2  # with scoring_data: batches
    temperature: float = 200.0
    reinit_linear: bool = True

    def validate(self) -> None:
        super().validate()
        _positive("temperature", self.temperature)


@register
class Grasp(PruneAtInit):
    """GraSP: remove the floor(kappa*N) largest -w * (H g) scores (keeps gradient flow).

    Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by Preserving Gradient
    Flow", ICLR 2020. Loss CE(f(x)/T, y); g summed over the scoring batches and held constant;
    Hg = d(g . dL_b/dw)/dw summed over batches (double back-propagation), BN in train mode.
    """

    family = "grasp"
    Params = GraspParams

    def masks(self, trainer: Trainer) -> Masks:
        scores = pai_scores.grasp_scores(
            trainer.model,
            self.p.batches(trainer, split_halves=True),
            self.p.temperature,
            self.p.reinit_linear,
            self.generator(),
        )
        return pai_scores.masks_remove_highest(scores, self.spec.kappa)


@dataclasses.dataclass(frozen=True)
class SynflowParams:
    """SynFlow: 100 pruning rounds, scored in float32 as the reference code does
    (``double: true`` scores in float64, which avoids overflow of R in very deep nets)."""

    iterations: int = 100
    double: bool = False

    def validate(self) -> None:
        _positive("iterations", self.iterations)


@register
class Synflow(PruneAtInit):
    """SynFlow: iterative data-free pruning by synaptic flow |w * dR/dw|.

    Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by iteratively
    conserving synaptic flow", NeurIPS 2020. Every parameter and buffer replaced by its
    absolute value, BN in eval mode (running stats at init: mean 0, var 1), input all ones of
    the data shape, R = sum of the logits; round k of T keeps N - int((1 - d^(k/T)) N)
    weights with d = 1-kappa (the reference's exponential schedule and rounding), scores
    recomputed with the previous mask applied; the last round keeps exactly N - floor(kappa*N).
    The trained model keeps its original signed weights.
    """

    family = "synflow"
    Params = SynflowParams

    def masks(self, trainer: Trainer) -> Masks:
        info = trainer.info
        shape = (info.in_channels, info.image_size, info.image_size)
        return pai_scores.synflow_masks(
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
class SmartRatio(PruneAtInit):
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
        return pai_scores.smart_ratio_masks(
            trainer.model, self.spec.kappa, self.generator(), self.p.linear_keep_ratio, index_decay
        )
