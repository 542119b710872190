"""Dense training: the 0% baseline, and the source of every method's dense checkpoints.

It saves ``snapshot_e{E}.pt`` (model + optimizer) after the epochs other methods start from:
ART's warm-up (the dense schedule keeps lr 0.1 until epoch 80, so its epoch-60 state is
exactly ART's reference warm-up) and LTH's rewind point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine import Phase, Trainer
from .base import Method, register


@register
class Dense(Method):
    """Plain SGD training on the config's ``dense`` schedule (160 epochs, steps [80, 120])."""

    family = "dense"
    exact_sparsity = False
    needs_kappa = False

    @classmethod
    def estimated_epochs(cls, params: Any, dense: dict[str, Any], finetune: dict[str, Any],
                         kappa: float, art_epochs: int) -> int:
        return int(dense["epochs"])

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        d = self.spec.dense
        snaps = {e: f"snapshot_e{e}.pt" for e in self.spec.snapshot_epochs if 0 < e <= d.epochs}

        def start(t: Trainer) -> None:
            if 0 in self.spec.snapshot_epochs:  # the initial weights (e.g. LTH rewinding to 0)
                t.save_snapshot(t.run_dir / "snapshot_e0.pt")

        trainer.fit(Phase("dense", d.epochs, self.spec.optim.lr, d.milestones, d.gamma, 0, snaps),
                    on_start=start)
        return {}
