"""Alternating Compressed / DeCompressed training [acdc].

Peste, Iofinova, Vladu & Alistarh, "AC/DC: Alternating Compressed/DeCompressed Training of
Deep Neural Networks", NeurIPS 2021.

From scratch on the config's fine-tuning schedule: a dense warm-up, then sparse
(compressed) and dense (decompressed) phases of equal length in turn, and a longer sparse
phase at the end, so the final model has exactly floor(kappa*N) zeros. Each sparse phase
starts by taking the global magnitude top-(1-kappa) mask of the current weights and holds it
fixed (weights, gradients and momentum of pruned weights zero); a dense phase lifts the mask,
pruned weights restart from zero.

Reference: IST-DASLab/ACDC (``policies/pruners.py`` UnstructuredMagnitudePruner: one global
magnitude threshold over all pruned layers, at the target sparsity from the first sparse
phase on; ``policies/recyclers.py`` RestoreWeights: pruned weights come back as zeros).
Defaults are fractions of the schedule, so short demo schedules keep the shape. They follow
the authors' CIFAR-10 ResNet-20 configuration (200 epochs: pruning at epochs 10, 50, ..., 170,
weights restored at 30, 70, ..., 150, so dense until 10, phases of 20 epochs, last sparse
phase 170-200): warm-up 5%, phases 10%, final sparse phase 15%. Each length is at least one
epoch; a sparse phase that would end right before the final one is merged into it.
``reset_momentum_on_decompress`` (default True, as the authors' run scripts pass
``--reset_momentum_after_recycling``) zeroes every momentum buffer when a dense phase starts.
Deviations: the mask has exactly floor(kappa*N) zeros (the reference's percentile threshold
keeps ties); the momentum of newly pruned weights is zeroed at compression (the reference lets
it decay while the mask holds those weights at zero: the weights are the same, and after a
phase of many steps so is the momentum).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .. import masks as mask_ops
from ..engine import MaskHooks, Trainer
from .base import Method, register


@dataclasses.dataclass(frozen=True)
class ACDCParams:
    """Warm-up, phase and final-phase lengths as fractions of the training epochs."""

    warmup_frac: float = 0.05
    phase_frac: float = 0.1
    final_frac: float = 0.15
    reset_momentum_on_decompress: bool = True

    def validate(self) -> None:
        """All fractions in [0, 1) with room left for the alternation."""
        for name in ("warmup_frac", "phase_frac", "final_frac"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.warmup_frac + self.final_frac >= 1.0:
            raise ValueError("warmup_frac + final_frac must be < 1")


def epoch_modes(epochs: int, p: ACDCParams) -> list[str]:
    """'dense' or 'sparse' for each epoch of the phase; the last epoch is always sparse."""
    if epochs <= 0:
        return []
    final = max(1, round(p.final_frac * epochs))
    warm = round(p.warmup_frac * epochs)
    warm = min(max(warm, 1) if p.warmup_frac > 0 else 0, epochs - final)
    length = max(1, round(p.phase_frac * epochs))
    modes = ["dense"] * warm
    middle = epochs - warm - final
    for i in range(middle):
        modes.append("sparse" if (i // length) % 2 == 0 else "dense")
    return modes + ["sparse"] * final


def reset_momentum(optimizer: torch.optim.Optimizer | None) -> None:
    """Zero every momentum buffer (the reference's ``reset_momentum_buffer``)."""
    if optimizer is None:
        return
    for state in optimizer.state.values():
        buf = state.get("momentum_buffer")
        if buf is not None:
            buf.zero_()


class ACDCHooks(MaskHooks):
    """Toggles between a fixed magnitude mask and no mask at epoch boundaries (a captured step
    is recorded again when the mask changes: :meth:`graph_key`)."""

    capture_safe = True

    def __init__(self, p: ACDCParams, kappa: float) -> None:
        super().__init__()
        self.p, self.kappa = p, kappa
        self.modes: list[str] = []
        self.mode = "dense"
        self.sparse_phases = 0

    def on_phase_start(self, trainer: Trainer) -> None:
        assert trainer.phase is not None
        self.modes = epoch_modes(trainer.phase.epochs, self.p)
        self.masks = {}
        self.set_mode(trainer, self.modes[0] if self.modes else "sparse")

    @torch.no_grad()
    def set_mode(self, trainer: Trainer, mode: str) -> None:
        """Compress (new magnitude mask from the current weights) or decompress."""
        if mode == self.mode and (mode == "dense" or self.masks):
            return
        self.mode = mode
        if mode == "sparse":
            self.masks = mask_ops.model_masks_by_magnitude(trainer.model, self.kappa)
            mask_ops.apply_masks(trainer.model, self.masks)
            mask_ops.zero_momentum(trainer.optimizer, trainer.model, self.masks)
            self.sparse_phases += 1
        else:
            if self.masks and self.p.reset_momentum_on_decompress:
                reset_momentum(trainer.optimizer)
            self.masks = {}

    def end_epoch(self, trainer: Trainer, row: dict[str, Any]) -> bool:
        nxt = trainer.phase_epoch  # epochs done in this phase = index of the next epoch
        if nxt < len(self.modes):
            self.set_mode(trainer, self.modes[nxt])
        return False

    def on_phase_end(self, trainer: Trainer) -> dict[str, Any]:
        self.set_mode(trainer, "sparse")  # no-op unless the schedule ended dense
        return {
            "acdc": {
                "modes": "".join("S" if m == "sparse" else "D" for m in self.modes),
                "sparse_phases": self.sparse_phases,
                "dense_epochs": sum(m == "dense" for m in self.modes),
                "sparse_epochs": sum(m == "sparse" for m in self.modes),
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "modes": self.modes,
            "mode": self.mode,
            "sparse_phases": self.sparse_phases,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.modes = list(state.get("modes", []))
        self.mode = str(state.get("mode", "dense"))
        self.sparse_phases = int(state.get("sparse_phases", 0))


@register
class ACDC(Method):
    """AC/DC from scratch on the fine-tuning schedule."""

    family = "acdc"
    Params = ACDCParams

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        hooks = ACDCHooks(self.p, self.spec.kappa)
        result = trainer.fit(self.finetune_phase("acdc"), hooks)
        return {"acdc": result["acdc"]}
