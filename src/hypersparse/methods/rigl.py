"""Rigged Lottery: sparse training from scratch with drop/grow mask updates [rigl].

Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets Winners",
ICML 2020.

- Layer densities: Erdős–Rényi-Kernel (ERK), density_l proportional to
  sum(shape_l) / prod(shape_l), scaled so the kept weights total exactly
  N - floor(kappa*N), layers that would exceed density 1 kept dense and the rest rescaled;
  integer counts by largest-remainder rounding. ``distribution = "uniform"`` gives every
  layer the same density. ``dense_first_layer`` (default False, as for ERK in the paper;
  the paper's uniform baseline sets it) keeps the first conv dense.
- Initial mask: uniformly random within each layer (torch.Generator seeded by spec.seed).
- Every ``delta_t`` steps (default 100) until ``end_frac`` (0.75) of training, per layer:
  drop the fraction f_t = alpha/2 (1 + cos(pi t / T_end)) (alpha = 0.3) of active weights
  with the smallest |w|, grow as many inactive ones with the largest |dense gradient| of the
  current batch. Grown weights start at zero with zero momentum; a weight dropped and grown
  in the same update keeps its value (the reference code's default). Per-layer counts, hence
  densities, never change. Unlike the reference code, the SGD step of an update iteration is
  still taken (before the mask update), which changes nothing but the order.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import torch

from .. import masks as M
from ..engine import MaskHooks, Trainer
from .base import Method, register


@dataclasses.dataclass(frozen=True)
class RigLParams:
    """Paper defaults: ERK, delta_t = 100, alpha = 0.3, updates until 75% of training."""

    delta_t: int = 100
    alpha: float = 0.3
    end_frac: float = 0.75
    distribution: Literal["erk", "uniform"] = "erk"
    dense_first_layer: bool = False

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
    real = {k: min(eps * raw[k] * sizes[k], float(sizes[k])) for k in rest}
    counts.update({k: int(math.floor(v)) for k, v in real.items()})
    left = keep - sum(counts.values())
    order = sorted(rest, key=lambda k: -(real[k] - math.floor(real[k])))  # stable: layer order
    while left > 0:
        progressed = False
        for k in order:
            if left == 0:
                break
            if counts[k] < sizes[k]:
                counts[k] += 1
                left -= 1
                progressed = True
        if not progressed:
            raise ValueError("no room left to place the kept weights")  # cannot happen
    return counts


def drop_fraction(step: int, alpha: float, t_end: int) -> float:
    """f_t = alpha/2 (1 + cos(pi t / T_end)), the cosine-decayed update fraction."""
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end)) if t_end > 0 else 0.0


def random_layer_masks(
    named: list[tuple[str, torch.Tensor]], counts: dict[str, int], seed: int
) -> M.Masks:
    """Exactly counts[name] kept weights per layer, positions uniform at random."""
    gen = torch.Generator().manual_seed(seed)
    masks: M.Masks = {}
    for name, w in named:
        flat = torch.zeros(w.numel(), dtype=torch.bool)
        flat[torch.randperm(w.numel(), generator=gen)[: counts[name]]] = True
        masks[name] = flat.view(w.shape).to(w.device)
    return masks


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
    survivors = M.topk_masks_from_scores([(name, keep_scores)], active - k)[name]
    grow_scores = torch.where(survivors, -1.0, grad_abs.float())
    grown = M.topk_masks_from_scores([(name, grow_scores)], k)[name]
    return survivors | grown, grown & ~mask


class RigLHooks(MaskHooks):
    """Fixed per-layer counts; periodic magnitude drop / gradient grow."""

    def __init__(self, p: RigLParams) -> None:
        super().__init__()
        self.p = p
        self.t_end = 0
        self.updates = 0
        self._grads: dict[str, torch.Tensor] = {}

    def on_phase_start(self, trainer: Trainer) -> None:
        assert trainer.phase is not None
        self.t_end = int(self.p.end_frac * trainer.phase.epochs * len(trainer.train_loader))
        super().on_phase_start(trainer)

    def is_update(self, step: int) -> bool:
        """Update after steps delta_t, 2 delta_t, ... before T_end."""
        return 0 < step < self.t_end and step % self.p.delta_t == 0

    def before_step(self, trainer: Trainer) -> None:
        if self.is_update(trainer.step):  # the dense gradient, before masking
            self._grads = {
                k: w.grad.detach().abs().clone()
                for k, w in M.prunable_named_weights(trainer.model)
                if w.grad is not None
            }
        super().before_step(trainer)

    def after_step(self, trainer: Trainer) -> None:
        super().after_step(trainer)
        if self.is_update(trainer.step):
            self.update(trainer, drop_fraction(trainer.step, self.p.alpha, self.t_end))

    @torch.no_grad()
    def update(self, trainer: Trainer, fraction: float) -> None:
        """Drop/grow in every layer; new connections start at zero with zero momentum."""
        still: M.Masks = {}
        for name, w in M.prunable_named_weights(trainer.model):
            g = self._grads.get(name, torch.zeros_like(w))
            old = self.masks[name]
            new, _ = drop_grow(w, g, old, fraction, name)
            self.masks[name] = new
            still[name] = new & old  # weights that were and stay active keep their momentum
        M.apply_masks(trainer.model, self.masks)  # dropped -> 0; grown were 0 already
        M.zero_momentum(trainer.optimizer, trainer.model, still)
        self._grads = {}
        self.updates += 1

    def on_phase_end(self, trainer: Trainer) -> dict[str, Any]:
        return {"rigl_updates": self.updates, "rigl_t_end": self.t_end}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "t_end": self.t_end, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.t_end = int(state.get("t_end", 0))
        self.updates = int(state.get("updates", 0))


@register
class RigL(Method):
    """Sparse training from scratch on the fine-tuning schedule with RigL mask updates."""

    family = "rigl"
    Params = RigLParams

    def initial_masks(self, model: torch.nn.Module) -> M.Masks:
        """ERK (or uniform) per-layer counts, random positions, exact global count."""
        named = M.prunable_named_weights(model)
        n = sum(w.numel() for _, w in named)
        keep = n - M.target_zeros(self.spec.kappa, n)
        dense = {named[0][0]} if self.p.dense_first_layer and named else set()
        counts = layer_keep_counts(
            [(k, tuple(w.shape)) for k, w in named], keep, self.p.distribution, dense
        )
        return random_layer_masks(named, counts, self.spec.seed)

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        hooks = RigLHooks(self.p)

        def start(t: Trainer) -> None:
            hooks.masks = self.initial_masks(t.model)

        result = trainer.fit(self.finetune_phase("rigl"), hooks, on_start=start)
        return {"rigl": {"updates": result.get("rigl_updates"), "t_end": result.get("rigl_t_end")}}
