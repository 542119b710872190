"""CIFAR-style ResNet of depth 6n+2 with 32/64/128 base channels (GraSP / HyperSparse layout).

Layout (PAPER_NOTES.md section 1): 3x3 conv in->32w + BN + ReLU, three stages of n BasicBlocks
with 32w / 64w / 128w channels, stride 2 at the first block of stages 2 and 3, a 1x1 conv + BN
shortcut wherever the shape changes, global average pooling and Linear(128w, C). Convs have no
bias. The authors' code switches to Bottleneck blocks at depth >= 54; this project uses
BasicBlocks at every depth (only ResNet-32 is in the paper's grid).
"""

from __future__ import annotations

import torch
from torch import nn


def scaled_channels(channels: int, width: float) -> int:
    """round(channels * width), at least 1: how ``width`` scales every layer."""
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-(6n+2) for small images; works for any input size >= 1 px and any class count."""

    def __init__(
        self, depth: int, num_classes: int, in_channels: int = 3, width: float = 1.0
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n+2, e.g. 8, 14, 20, 32, 56; got {depth}")
        n = (depth - 2) // 6
        chans = [scaled_channels(c, width) for c in (32, 64, 128)]
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, chans[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(chans[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_ch = chans[0]
        for i, out_ch in enumerate(chans):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[2], num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Authors' init: Kaiming normal (fan_out, relu) convs, BN 1/0, classifier N(0, 0.01)/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
