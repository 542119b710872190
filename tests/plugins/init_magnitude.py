"""The README's "Adding a method" example, used by tests as a real plugin module."""

from dataclasses import dataclass

from hypersparse.masks import prunable_named_weights
from hypersparse.methods import PruneAtInit, register


@register
class InitMagnitude(PruneAtInit):
    """Keep the largest |w| at initialisation, then train sparse from scratch."""

    family = "init_magnitude"

    @dataclass(frozen=True)
    class Params:
        score_power: float = 1.0

    def score(self, trainer):
        named = prunable_named_weights(trainer.model)
        return [(k, w.detach().abs() ** self.p.score_power) for k, w in named]
