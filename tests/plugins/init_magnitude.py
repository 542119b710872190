"""The README's "Adding a method" example, used by tests as a real plugin module."""

from dataclasses import dataclass

from hypersparse.masks import prunable_named_weights, target_zeros, topk_masks_from_scores
from hypersparse.methods import Method, register


@register
class InitMagnitude(Method):
    """Keep the largest |w| at initialisation, then train sparse from scratch."""

    family = "init_magnitude"

    @dataclass(frozen=True)
    class Params:
        score_power: float = 1.0

    def run(self, trainer, dense_dir):
        def masks(t):
            named = prunable_named_weights(t.model)
            n = sum(w.numel() for _, w in named)
            keep = n - target_zeros(self.spec.kappa, n)
            scores = [(k, w.detach().abs() ** self.p.score_power) for k, w in named]
            return topk_masks_from_scores(scores, keep)

        self.train_with_mask(trainer, masks, name="train")
        return {}
