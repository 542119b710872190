"""Gradual magnitude pruning on a cubic sparsity schedule [gmp].

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression", ICLR 2018 workshop (arXiv 1710.01878); reference code: TensorFlow's
``contrib/model_pruning`` (``pruning.py``), whose rules are the default here:

- Schedule, with t the optimizer steps taken: s_t = s_f + (s_i - s_f) (1 - p)^3,
  p = clip((t - begin) / (end - begin), 0, 1); the masks are updated at t when
  begin <= t <= end and t >= (t of the last update) + dt, the last update starting at 0
  (so the first update falls at max(begin, dt)).
- ``scope: layer`` (default, as the reference): every prunable layer gets its own threshold
  and the same sparsity s_t; ``scope: global`` uses one threshold over all layers.
- Masks only shrink; pruned weights stay exactly zero in between (momentum included).

Defaults: dt = 100 steps (Zhu & Gupta report 100-1000 makes no difference); s_i = 0; pruning
runs from 10% to 75% of the training steps (end as in the GMP baseline of Evci et al., ICML
2020), leaving the last quarter to recover at the final sparsity. ``from_dense = False``
trains from scratch on the config's fine-tuning schedule; ``True`` starts from the dense run's
final weights and prunes while fine-tuning on the same schedule.

Deviations, for exact counts: thresholds are exact selections (the reference estimates them
from a 255-bin histogram and smooths them over updates with ``threshold_decay``); the last
update at or before ``end`` prunes to exactly floor(kappa*N) zeros even where (end - begin)
is not a multiple of dt (the reference would stop short of s_f there), per layer
floor(s_t n_l) zeros and, at the end, largest-remainder shares of floor(kappa*N). Short
schedules whose window holds fewer than 10 intervals of dt prune more often (:func:`prune_steps`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch

from .. import masks as mask_ops
from ..engine import MaskHooks, Trainer
from .base import Method, load_dense_weights, register

MIN_INCREMENTS = 10  # short schedules still prune in at least this many steps


@dataclasses.dataclass(frozen=True)
class GMPParams:
    """Cubic schedule from ``start_frac`` to ``end_frac`` of training, every ``prune_every_steps``."""

    start_frac: float = 0.1
    end_frac: float = 0.75
    prune_every_steps: int = 100
    initial_sparsity: float = 0.0
    from_dense: bool = False
    scope: Literal["layer", "global"] = "layer"

    def validate(self) -> None:
        """0 <= start_frac <= end_frac <= 1, positive dt, 0 <= initial_sparsity < 1."""
        if not 0.0 <= self.start_frac <= self.end_frac <= 1.0:
            raise ValueError(
                f"need 0 <= start_frac <= end_frac <= 1, got {self.start_frac}, {self.end_frac}"
            )
        if self.prune_every_steps < 1:
            raise ValueError(f"prune_every_steps must be >= 1, got {self.prune_every_steps}")
        if not 0.0 <= self.initial_sparsity < 1.0:
            raise ValueError(f"initial_sparsity must be in [0, 1), got {self.initial_sparsity}")


def cubic_sparsity(t: int, begin: int, end: int, s_i: float, s_f: float) -> float:
    """The reference's s_t = s_f + (s_i - s_f)(1 - p)^3, p = clip((t-begin)/(end-begin), 0, 1)."""
    if end <= begin:
        return s_f if t >= begin else s_i
    p = min(1.0, max(0.0, (t - begin) / (end - begin)))
    return s_f + (s_i - s_f) * (1.0 - p) ** 3


def prune_steps(total_steps: int, p: GMPParams) -> tuple[int, int, int]:
    """(begin, end, dt) in optimizer steps taken: begin = round(start_frac T),
    end = round(end_frac T) (at most T), dt = ``prune_every_steps``. When the window holds
    fewer than MIN_INCREMENTS intervals of dt (short demo schedules), dt shrinks so that it
    does (down to 1 step)."""
    begin = min(int(round(p.start_frac * total_steps)), total_steps)
    end = min(max(int(round(p.end_frac * total_steps)), begin), total_steps)
    dt = max(1, min(p.prune_every_steps, (end - begin) // MIN_INCREMENTS))
    return begin, end, dt


def update_steps(begin: int, end: int, dt: int) -> list[int]:
    """Steps taken t at which the reference updates the masks: begin <= t <= end and
    t >= last + dt, with last starting at 0."""
    first = max(begin, dt)
    return list(range(first, end + 1, dt))


class GMPHooks(MaskHooks):
    """Masks that shrink on the cubic schedule; exact zeros between pruning steps.

    Pruning runs on the host after the step (:meth:`after_iteration`) and changes the masks
    in place, so a step replayed from a CUDA graph keeps reading them.
    """

    capture_safe = True

    def __init__(self, p: GMPParams, kappa: float) -> None:
        super().__init__()
        self.p, self.kappa = p, kappa
        self.schedule: tuple[int, int, int] = (0, 0, 1)
        self.final_step = 0
        self.log: list[list[float]] = []  # [steps taken, sparsity] of each pruning step

    def on_phase_start(self, trainer: Trainer) -> None:
        phase = trainer.phase
        assert phase is not None
        self.masks = {k: torch.ones_like(w, dtype=torch.bool)
                      for k, w in mask_ops.prunable_named_weights(trainer.model)}
        self.schedule = prune_steps(phase.epochs * len(trainer.train_loader), self.p)
        steps = update_steps(*self.schedule)
        self.final_step = steps[-1] if steps else -1
        super().on_phase_start(trainer)

    def target(self, t: int) -> float:
        """Sparsity the schedule asks for after ``t`` optimizer steps."""
        begin, end, _ = self.schedule
        return cubic_sparsity(t, begin, end, self.p.initial_sparsity, self.kappa)

    def is_prune_step(self, t: int) -> bool:
        """True when the masks are updated after ``t`` optimizer steps."""
        begin, end, dt = self.schedule
        first = max(begin, dt)
        return first <= t <= end and (t - first) % dt == 0

    def layer_zeros(self, sizes: list[int], sparsity: float, final: bool) -> list[int]:
        """Zeros per layer: floor(s n_l), or at the end exact shares of floor(kappa N)."""
        if not final:
            return [mask_ops.target_zeros(sparsity, n) for n in sizes]
        return mask_ops.apportion([self.kappa * n for n in sizes], sizes, mask_ops.target_zeros(self.kappa,
                                                                               sum(sizes)))

    @torch.no_grad()
    def prune(self, trainer: Trainer, sparsity: float, final: bool = False) -> None:
        """Shrink the masks to ``sparsity`` by magnitude among the live weights, per layer
        (``scope: layer``) or globally."""
        named = mask_ops.prunable_named_weights(trainer.model)
        sizes = [w.numel() for _, w in named]
        n = sum(sizes)
        before = sum(int((~m).sum()) for m in self.masks.values())
        scores = [(k, torch.where(self.masks[k], w.abs(), -1.0)) for k, w in named]
        if self.p.scope == "global":
            zeros = mask_ops.target_zeros(self.kappa if final else sparsity, n)
            if zeros <= before:
                return  # masks only shrink
            for k, m in mask_ops.topk_masks_from_scores(scores, n - zeros).items():
                self.masks[k].copy_(m)
        else:
            goal = self.layer_zeros(sizes, sparsity, final)
            changed = False
            for (k, sc), z, size in zip(scores, goal, sizes, strict=True):
                if z > int((~self.masks[k]).sum()):
                    self.masks[k].copy_(mask_ops.topk_masks_from_scores([(k, sc)], size - z)[k])
                    changed = True
            if not changed:
                return
        mask_ops.apply_masks(trainer.model, self.masks)
        mask_ops.zero_momentum(trainer.optimizer, trainer.model, self.masks)
        zeros = sum(int((~m).sum()) for m in self.masks.values())
        self.log.append([trainer.step + 1, zeros / n])

    def after_iteration(self, trainer: Trainer) -> None:
        t = trainer.step + 1  # optimizer steps taken, as the reference's global step
        if self.is_prune_step(t):
            self.prune(trainer, self.target(t), final=t == self.final_step)

    def on_phase_end(self, trainer: Trainer) -> dict[str, Any]:
        # Safety net (e.g. a zero-step phase): the final model must have exactly the target.
        self.prune(trainer, self.kappa, final=True)
        begin, end, dt = self.schedule
        return {"gmp": {"begin": begin, "end": end, "dt": dt, "scope": self.p.scope,
                        "prune_steps": len(self.log)}}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "schedule": list(self.schedule),
                "final_step": self.final_step, "log": self.log}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        begin, end, dt = state.get("schedule", (0, 0, 1))
        self.schedule = (int(begin), int(end), int(dt))
        self.final_step = int(state.get("final_step", -1))
        self.log = [list(x) for x in state.get("log", [])]


@register
class GradualMagnitude(Method):
    """Zhu & Gupta's gradual magnitude pruning, from scratch or from the dense model."""

    family = "gmp"
    Params = GMPParams

    @classmethod
    def dense_inputs(cls, params: Any) -> list[str]:
        return ["model.pt"] if params.from_dense else []

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        hooks = GMPHooks(self.p, self.spec.kappa)

        def start(t: Trainer) -> None:
            if self.p.from_dense:
                assert dense_dir is not None
                load_dense_weights(t, dense_dir / "model.pt")

        result = trainer.fit(self.finetune_phase("gmp"), hooks, on_start=start)
        return {"gmp": result["gmp"]}
