"""Models by name: ``resnet<6n+2>`` (e.g. resnet32) and ``vgg<11|13|16|19>`` (BatchNorm VGG).

MODEL_NAMES documents the grammar; :func:`build_model` is the one entry point the rest of the
project uses, so a model is fully determined by (name, num_classes, in_channels, width) and
the torch seed.
"""

from __future__ import annotations

import re

from torch import nn

from hypersparse.models.resnet import ResNet
from hypersparse.models.vgg import VGG, VGG_CONFIGS

MODEL_NAMES = (
    "resnet<d> with d = 6n+2 >= 8 (resnet8, resnet14, resnet20, resnet32, resnet56, ...); "
    "vgg11, vgg13, vgg16, vgg19 (with BatchNorm)"
)

_NAME_RE = re.compile(r"^(resnet|vgg)(\d+)$")

__all__ = [
    "MODEL_NAMES",
    "ResNet",
    "VGG",
    "build_model",
    "is_valid_model_name",
    "parse_model_name",
]


def parse_model_name(name: str) -> tuple[str, int]:
    """Split e.g. 'resnet32' into ('resnet', 32); ValueError with the allowed depths otherwise."""
    m = _NAME_RE.match(name.strip().lower()) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown model name {name!r}; expected {MODEL_NAMES}")
    family, depth = m.group(1), int(m.group(2))
    if family == "resnet" and (depth < 8 or (depth - 2) % 6 != 0):
        raise ValueError(
            f"bad model name {name!r}: ResNet depth must be 6n+2, e.g. 8, 14, 20, 32, 56"
        )
    if family == "vgg" and depth not in VGG_CONFIGS:
        raise ValueError(f"bad model name {name!r}: VGG depth must be 11, 13, 16 or 19")
    return family, depth


def is_valid_model_name(name: str) -> bool:
    """True when :func:`build_model` accepts ``name``."""
    try:
        parse_model_name(name)
    except ValueError:
        return False
    return True


def build_model(name: str, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """Build a freshly initialised model by name (init depends only on the torch RNG state)."""
    family, depth = parse_model_name(name)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}"
        )
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    cls = ResNet if family == "resnet" else VGG
    return cls(depth, num_classes, in_channels=in_channels, width=width)
