"""Rigged Lottery: sparse training from scratch with drop/grow mask updates [rigl].

Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets Winners",
ICML 2020; reference code google-research/rigl (``rigl/sparse_optimizers_base.py``, CIFAR
script ``rigl/cifar_resnet/resnet_train_eval.py``), whose behaviour is the default here:

- Layer densities: Erdős–Rényi-Kernel (ERK), density_l proportional to
  sum(shape_l) / prod(shape_l), scaled so the kept weights total exactly
  N - floor(kappa*N), layers that would exceed density 1 kept dense and the rest rescaled;
  integer counts by largest-remainder rounding. ``distribution = "uniform"`` gives every
  layer the same density.
- ``dense_first_layer`` (default True, the CIFAR code's ``prune_first_layer=False``): the
  first conv stays dense and outside the mask. Deviation: the other layers absorb its
  share, so the whole network still has exactly floor(kappa*N) zeros (the reference counts
  its sparsity over the masked layers only).
- Initial mask: uniformly random within each layer (torch.Generator seeded by spec.seed).
- Schedule, with t the number of SGD steps taken so far: an iteration is a mask update when
  t <= T_end and t >= (t of the last update) + delta_t, the first at t = 0, so updates fall
  at t = 0, delta_t, 2 delta_t, ... up to and including T_end = end_frac of the phase's
  iterations. A mask-update iteration applies the update *instead of* the SGD step (the
  reference's ``cond_mask_update_op``), so t does not advance on it.
- Update, per layer: drop the fraction f_t = alpha/2 (1 + cos(pi min(t, T_end) / T_end))
  (alpha = 0.3) of active weights with the smallest |w|, grow as many inactive ones with the
  largest |dense gradient| of the current batch. Grown weights start at zero with zero
  momentum; a weight dropped and grown in the same update keeps its value. Per-layer counts,
  hence densities, never change.
- Deviations: ties are broken by position instead of the reference's N(0, 1e-5) noise on the
  drop scores; only positions with a non-zero gradient can grow (a grown weight with zero
  gradient would stay zero for ever), so with fewer such candidates fewer are dropped.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import torch

from .. import masks as mask_ops
from ..engine import MaskHooks, Trainer
from .base import Method, register


@dataclasses.dataclass(frozen=True)
class RigLParams:
    """Reference defaults: ERK, delta_t = 100, alpha = 0.3, updates until 75% of training,
    the first layer dense."""

    delta_t: int = 100
    alpha: float = 0.3
    end_frac: float = 0.75
    distribution: Literal["erk", "uniform"] = "erk"
    dense_first_layer: bool = True

    def validate(self) -> None:
        """Positive update interval, alpha and end_frac in (0, 1]."""
        if self.delta_t < 1:
            raise ValueError(f"delta_t must be >= 1, got {self.delta_t}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not 0.0 < self.end_frac <= 1.0:
            raise ValueError(f"end_frac must be in (0, 1], got {self.end_frac}")


def layer_keep_counts(
    shapes: list[tuple[str, tuple[int, ...]]],
    keep: int,
    distribution: str = "erk",
    dense: frozenset[str] | set[str] = frozenset(),
) -> dict[str, int]:
    """Kept weights per layer, summing to exactly ``keep``, each at most the layer size.

    ERK raw density sum(shape)/prod(shape) (uniform: 1), scaled by one global factor; layers
    that would pass density 1 (and those in ``dense``) are kept whole and the factor is
    recomputed for the rest; fractions are rounded by largest remainder (ties: layer order).
    """
    sizes = {k: math.prod(s) for k, s in shapes}
    total = sum(sizes.values())
    if not 0 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} weights")
    raw = {k: (sum(s) / math.prod(s) if distribution == "erk" else 1.0) for k, s in shapes}
    full = set(dense)
    while True:
        budget = keep - sum(sizes[k] for k in full)
        if budget < 0:
            raise ValueError(f"layers kept dense ({sorted(dense)}) hold more than {keep} weights")
        rest = [k for k, _ in shapes if k not in full]
        denom = sum(raw[k] * sizes[k] for k in rest)
        eps = budget / denom if denom > 0 else 0.0
        grown = {k for k in rest if eps * raw[k] >= 1.0}
        if not grown:
            break
        full |= grown
    counts = {k: sizes[k] for k in full}
    real = [min(eps * raw[k] * sizes[k], float(sizes[k])) for k in rest]
    left = keep - sum(counts.values())
    counts.update(zip(rest, mask_ops.apportion(real, [sizes[k] for k in rest], left), strict=True))
    return counts


def drop_fraction(step: int, alpha: float, t_end: int) -> float:
    """f_t = alpha/2 (1 + cos(pi min(t, T_end) / T_end)), the cosine-decayed update fraction."""
    if t_end <= 0:
        return alpha
    return alpha / 2.0 * (1.0 + math.cos(math.pi * min(step, t_end) / t_end))


def update_steps(delta_t: int, t_end: int) -> list[int]:
    """SGD-step counts t at which the reference updates the mask: 0, delta_t, ..., <= T_end."""
    return list(range(0, t_end + 1, delta_t))


@torch.no_grad()
def drop_grow(
    weight: torch.Tensor, grad_abs: torch.Tensor, mask: torch.Tensor, fraction: float, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's RigL update: (new mask, newly connected positions). Count is unchanged.

    Only positions with a non-zero gradient can grow: a grown weight starts at zero, and one
    whose gradient is zero (e.g. behind a dead channel) would stay zero for ever, silently
    raising the sparsity above its target. With fewer such candidates, fewer are dropped.
    """
    active = int(mask.sum())
    k = min(int(fraction * active), int(((grad_abs > 0) & ~mask).sum()))
    if k == 0:
        return mask, torch.zeros_like(mask)
    keep_scores = torch.where(mask, weight.abs(), -1.0)
    survivors = mask_ops.topk_masks_from_scores([(name, keep_scores)], active - k)[name]
    grow_scores = torch.where(survivors, -1.0, grad_abs.float())
    grown = mask_ops.topk_masks_from_scores([(name, grow_scores)], k)[name]
    return survivors | grown, grown & ~mask


class RigLHooks(MaskHooks):
    """Fixed per-layer counts; periodic magnitude drop / gradient grow instead of an SGD step.

    Where steps are replayed from a CUDA graph, update iterations run eagerly
    (:meth:`eager_iteration`) and masks change in place, so the graph stays valid.
    """

    capture_safe = True

    def __init__(self, p: RigLParams) -> None:
        super().__init__()
        self.p = p
        self.t_end = 0
        self.updates = 0
        self.sgd_steps = 0  # t: SGD steps taken in this phase (update iterations excluded)
        self.last_update = -p.delta_t  # so that the first update falls at t = 0
        self._replaced = False

    def on_phase_start(self, trainer: Trainer) -> None:
        assert trainer.phase is not None
        self.t_end = int(self.p.end_frac * trainer.phase.epochs * len(trainer.train_loader))
        super().on_phase_start(trainer)

    def is_update(self) -> bool:
        """The reference's rule at the current t: t <= T_end and t >= last update + delta_t."""
        t = self.sgd_steps
        return t <= self.t_end and self.last_update + self.p.delta_t <= t

    def eager_iteration(self, trainer: Trainer) -> bool:
        return self.is_update()

    def replace_step(self, trainer: Trainer) -> bool:
        if not self.is_update():
            return False
        self.update(trainer, drop_fraction(self.sgd_steps, self.p.alpha, self.t_end))
        self.last_update = self.sgd_steps
        self._replaced = True
        return True

    def after_iteration(self, trainer: Trainer) -> None:
        if self._replaced:
            self._replaced = False
        else:
            self.sgd_steps += 1

    @torch.no_grad()
    def update(self, trainer: Trainer, fraction: float) -> None:
        """Drop/grow in every masked layer from the current (dense) gradients; new connections
        start at zero with zero momentum."""
        still: mask_ops.Masks = {}
        for name, w in mask_ops.prunable_named_weights(trainer.model):
            old = self.masks.get(name)
            if old is None:  # outside the mask (the dense first layer)
                continue
            g = w.grad.detach().abs() if w.grad is not None else torch.zeros_like(w)
            new, _ = drop_grow(w, g, old, fraction, name)
            still[name] = new & old  # weights that were and stay active keep their momentum
            old.copy_(new)  # in place: a captured step keeps reading this mask
        mask_ops.apply_masks(trainer.model, self.masks)  # dropped -> 0; grown were 0 already
        mask_ops.zero_momentum(trainer.optimizer, trainer.model, still)
        self.updates += 1

    def on_phase_end(self, trainer: Trainer) -> dict[str, Any]:
        return {"rigl": {"updates": self.updates, "t_end": self.t_end,
                         "sgd_steps": self.sgd_steps}}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "t_end": self.t_end,
            "updates": self.updates,
            "sgd_steps": self.sgd_steps,
            "last_update": self.last_update,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.t_end = int(state.get("t_end", 0))
        self.updates = int(state.get("updates", 0))
        self.sgd_steps = int(state.get("sgd_steps", 0))
        self.last_update = int(state.get("last_update", -self.p.delta_t))


@register
class RigL(Method):
    """Sparse training from scratch on the fine-tuning schedule with RigL mask updates."""

    family = "rigl"
    Params = RigLParams

    def initial_masks(self, model: torch.nn.Module) -> mask_ops.Masks:
        """ERK (or uniform) per-layer counts, random positions, exact global count.

        With ``dense_first_layer`` the first layer counts as kept whole and has no mask.
        """
        named = mask_ops.prunable_named_weights(model)
        n = sum(w.numel() for _, w in named)
        keep = mask_ops.keep_count(self.spec.kappa, n)
        dense = {named[0][0]} if self.p.dense_first_layer and named else set()
        counts = layer_keep_counts(
            [(k, tuple(w.shape)) for k, w in named], keep, self.p.distribution, dense
        )
        gen = torch.Generator().manual_seed(self.spec.seed)
        masks = mask_ops.random_layer_masks(named, [counts[k] for k, _ in named], gen)
        return {k: m for k, m in masks.items() if k not in dense}

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        hooks = RigLHooks(self.p)

        def start(t: Trainer) -> None:
            hooks.masks = self.initial_masks(t.model)

        result = trainer.fit(self.finetune_phase("rigl"), hooks, on_start=start)
        return {"rigl": result["rigl"]}
