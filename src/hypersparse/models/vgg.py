"""VGG-11/13/16/19 with BatchNorm and a single linear classifier (GraSP / HyperSparse layout).

As in the authors' code: 3x3 convs with bias + BN + ReLU, 2x2 max-pools between the blocks
(four of them; configurations A/B/D/E without the trailing pool), then an average pool over
the final map (2x2 at 32 px, 4x4 at 64 px) and Linear(512w, C).

Small inputs: the max-pools use ``ceil_mode=True``, so a 1x1 map stays 1x1 instead of
vanishing, and the final pool is adaptive (to 1x1). Any input size works (e.g. 16 px digits
give 8, 4, 2, 1); for even map sizes, i.e. at 32 and 64 px, ceil_mode changes nothing and the
network is identical to the reference.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hypersparse.models.resnet import scaled_channels

# "M" = 2x2 max-pool. Configurations A, B, D, E of Simonyan & Zisserman, minus the last pool.
VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512,
    ],
}  # fmt: skip


class VGG(nn.Module):
    """VGG-BN for small images with global average pooling and one linear layer."""

    def __init__(
        self, depth: int, num_classes: int, in_channels: int = 3, width: float = 1.0
    ) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be 11, 13, 16 or 19; got {depth}")
        self.depth = depth
        layers: list[nn.Module] = []
        ch = in_channels
        for v in VGG_CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                out = scaled_channels(int(v), width)
                layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(True)]
                ch = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Authors' init: conv N(0, sqrt(2 / (9 * in_channels))), bias 0; BN 1/0; Linear N(0, 0.01).

        The fan is the *input* fan (kernel_h * kernel_w * in_channels), as in the authors'
        models/vgg.py and PAPER_NOTES.md, not the fan_out of the torchvision / GraSP ResNets.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.kernel_size[0] * m.kernel_size[1] * m.in_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes)."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
