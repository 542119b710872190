"""Pilot subsets of a data set, named like ``cifar10-c5-n100`` or ``tinyimagenet-c20-n50-s32``:
the first C classes (``-c``), the first N training images per class in stored order (``-n``),
and for Tiny ImageNet a smaller image size (``-s``, area-resized). The test split keeps every
test image of the chosen classes (at the chosen size). A subset is a data set of its own: its
runs, run folders and tables carry its name, so they never mix with the full protocol.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import DataError, ImageData

_SUFFIX = re.compile(r"^(?P<base>[a-z0-9]+?)(?:-c(?P<c>\d+))?(?:-n(?P<n>\d+))?(?:-s(?P<s>\d+))?$")


@dataclass(frozen=True)
class Subset:
    """First ``classes`` classes, ``per_class`` training images each, images of ``size`` px."""

    classes: int | None = None
    per_class: int | None = None
    size: int | None = None

    def suffix(self) -> str:
        """``-c5-n100-s32`` (only the parts that are set)."""
        parts = [f"-c{self.classes}" if self.classes else "",
                 f"-n{self.per_class}" if self.per_class else "",
                 f"-s{self.size}" if self.size else ""]
        return "".join(parts)

    def describe(self) -> str:
        """Human-readable, for table headers."""
        parts = []
        if self.classes:
            parts.append(f"first {self.classes} classes")
        if self.per_class:
            parts.append(f"{self.per_class} training images per class")
        if self.size:
            parts.append(f"{self.size} px")
        return ", ".join(parts)


def parse(name: str) -> tuple[str, Subset | None]:
    """('cifar10', Subset(5, 100, None)) from 'cifar10-c5-n100'; (name, None) without suffix."""
    m = _SUFFIX.match(name)
    if m is None:
        return name, None
    sub = Subset(*(int(m.group(k)) if m.group(k) else None for k in ("c", "n", "s")))
    return m.group("base"), (sub if any((sub.classes, sub.per_class, sub.size)) else None)


def variant_name(base: str, classes: int | None, per_class: int | None,
                 size: int | None) -> str:
    """The data set name of a subset of ``base`` (``base`` itself for an empty subset)."""
    return base + Subset(classes, per_class, size).suffix()


def check(base: str, sub: Subset, num_classes: int, native_size: int) -> None:
    """DataError for a subset the base data set cannot give."""
    if sub.classes is not None and not 2 <= sub.classes <= num_classes:
        raise DataError(f"subset of {base}: classes must be in 2..{num_classes}, got {sub.classes}")
    if sub.per_class is not None and sub.per_class < 1:
        raise DataError(f"subset of {base}: per_class must be >= 1, got {sub.per_class}")
    if sub.size is not None:
        if base != "tinyimagenet":
            raise DataError(f"subset of {base}: a smaller image size is for tinyimagenet only")
        if not 8 <= sub.size < native_size:
            raise DataError(
                f"subset of {base}: image size must be in 8..{native_size - 1}, got {sub.size}")


def take(data: ImageData, sub: Subset, train: bool) -> ImageData:
    """The subset of one split: classes, images per class (training split only), size."""
    labels = data.labels
    keep = torch.ones_like(labels, dtype=torch.bool)
    if sub.classes is not None:
        keep &= labels < sub.classes
    if train and sub.per_class is not None:
        # rank of each image within its class, in stored order
        order = torch.argsort(labels, stable=True)
        sorted_labels = labels[order]
        starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
        rank = torch.empty_like(labels)
        rank[order] = torch.arange(len(labels)) - starts
        keep &= rank < sub.per_class
    idx = keep.nonzero().squeeze(1)
    images = data.images.index_select(0, idx)
    if sub.size is not None:
        resized = F.interpolate(images.float(), size=(sub.size, sub.size), mode="area")
        images = resized.round_().clamp_(0, 255).to(torch.uint8)
    return ImageData(images.contiguous(), labels.index_select(0, idx).clone())
