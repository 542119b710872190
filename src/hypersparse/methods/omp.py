"""One-shot global magnitude pruning of the trained dense model, then fine-tuning [omp].

Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NeurIPS 2015
(global variant, as used as a baseline throughout the pruning literature).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine import Trainer
from ..masks import model_masks_by_magnitude
from .base import Method, load_dense_weights, register


@register
class OneShotMagnitude(Method):
    """Prune the dense run's final weights to exactly floor(kappa*N) zeros, fine-tune."""

    family = "omp"

    @classmethod
    def dense_inputs(cls, params: Any) -> list[str]:
        return ["model.pt"]

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        assert dense_dir is not None

        def masks(t: Trainer):
            load_dense_weights(t, dense_dir / "model.pt")
            return model_masks_by_magnitude(t.model, self.spec.kappa)

        self.train_with_mask(trainer, masks)
        return {}
