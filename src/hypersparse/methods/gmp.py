"""Gradual magnitude pruning on a cubic sparsity schedule [gmp].

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression", ICLR 2018 workshop (arXiv 1710.01878).

Sparsity follows s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 for t0 <= t <= t0 + n dt,
pruning every dt optimizer steps by global magnitude (masks only shrink; pruned weights stay
exactly zero in between, momentum included), and ends at exactly floor(kappa*N) zeros.

Defaults: dt = 100 steps (Zhu & Gupta report 100-1000 makes no difference); s_i = 0; pruning
runs from 10% to 75% of the training steps (end as in the GMP baseline of Evci et al., ICML
2020), leaving the last quarter to recover at the final sparsity. ``from_dense = False``
trains from scratch on the config's fine-tuning schedule; ``True`` starts from the dense run's
final weights and prunes while fine-tuning on the same schedule. Short schedules whose pruning
window holds fewer than 10 intervals of dt prune more often (see :func:`prune_steps`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .. import masks as M
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


def cubic_sparsity(t: int, t0: int, n: int, dt: int, s_i: float, s_f: float) -> float:
    """Zhu & Gupta's s_t, clamped to s_i before t0 and s_f after t0 + n dt."""
    if t <= t0:
        return s_i
    if n * dt <= 0 or t >= t0 + n * dt:
        return s_f
    return s_f + (s_i - s_f) * (1.0 - (t - t0) / (n * dt)) ** 3


def prune_steps(total_steps: int, p: GMPParams) -> tuple[int, int, int]:
    """(t0, n, dt): first pruning step, number of increments, steps between pruning steps.

    Pruning happens after optimizer steps t0, t0+dt, ..., t0+n*dt (0-based step indices),
    the last one at or before end_frac of training and never after the last step. When the
    window holds fewer than MIN_INCREMENTS steps of dt (short demo schedules), dt shrinks so
    that it does (down to 1 step).
    """
    last = max(total_steps - 1, 0)
    t0 = min(int(round(p.start_frac * total_steps)), last)
    t_end = min(int(round(p.end_frac * total_steps)), last)
    span = max(t_end - t0, 0)
    dt = max(1, min(p.prune_every_steps, span // MIN_INCREMENTS))
    n = span // dt
    return t0, n, dt


class GMPHooks(MaskHooks):
    """Masks that shrink on the cubic schedule; exact zeros between pruning steps."""

    def __init__(self, p: GMPParams, kappa: float) -> None:
        super().__init__()
        self.p, self.kappa = p, kappa
        self.schedule: tuple[int, int, int] = (0, 0, 1)
        self.log: list[list[float]] = []  # [step, sparsity] of each pruning step

    def on_phase_start(self, trainer: Trainer) -> None:
        phase = trainer.phase
        assert phase is not None
        self.masks = {k: torch.ones_like(w, dtype=torch.bool)
                      for k, w in M.prunable_named_weights(trainer.model)}
        self.schedule = prune_steps(phase.epochs * len(trainer.train_loader), self.p)
        super().on_phase_start(trainer)

    def target(self, step: int) -> float:
        """Sparsity the schedule asks for after optimizer step ``step``."""
        t0, n, dt = self.schedule
        return cubic_sparsity(step, t0, n, dt, self.p.initial_sparsity, self.kappa)

    def is_prune_step(self, step: int) -> bool:
        """True after the steps t0 + i dt, i = 0..n."""
        t0, n, dt = self.schedule
        return t0 <= step <= t0 + n * dt and (step - t0) % dt == 0

    @torch.no_grad()
    def prune(self, trainer: Trainer, sparsity: float, final: bool = False) -> None:
        """Shrink the masks to ``sparsity`` by global magnitude among the live weights."""
        named = M.prunable_named_weights(trainer.model)
        n = sum(w.numel() for _, w in named)
        zeros = M.target_zeros(self.kappa, n) if final else M.target_zeros(sparsity, n)
        current = sum(int((~m).sum()) for m in self.masks.values())
        if zeros <= current:
            return  # masks only shrink
        scores = [(k, torch.where(self.masks[k], w.abs(), -1.0)) for k, w in named]
        self.masks = M.topk_masks_from_scores(scores, n - zeros)
        M.apply_masks(trainer.model, self.masks)
        M.zero_momentum(trainer.optimizer, trainer.model, self.masks)
        self.log.append([trainer.step, zeros / n])

    def after_step(self, trainer: Trainer) -> None:
        super().after_step(trainer)
        if self.is_prune_step(trainer.step):
            t0, n, dt = self.schedule
            self.prune(trainer, self.target(trainer.step), final=trainer.step == t0 + n * dt)

    def on_phase_end(self, trainer: Trainer) -> dict[str, Any]:
        # Safety net (e.g. a zero-step phase): the final model must have exactly the target.
        self.prune(trainer, self.kappa, final=True)
        t0, n, dt = self.schedule
        return {"gmp_schedule": {"t0": t0, "n": n, "dt": dt}, "gmp_prune_log": self.log}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "schedule": list(self.schedule), "log": self.log}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        t0, n, dt = state.get("schedule", (0, 0, 1))
        self.schedule = (int(t0), int(n), int(dt))
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
        return {"gmp": {**result.get("gmp_schedule", {}), "prune_steps": len(
            result.get("gmp_prune_log", []))}}
