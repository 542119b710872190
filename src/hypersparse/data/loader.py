"""Batches from a uint8 tensor held on the device, with batch-wise augmentation (no workers, no PIL).

Augmentation equals torchvision's RandomCrop(size, padding=pad) + RandomHorizontalFlip(0.5) in
distribution: per image, independent offsets uniform over the 2*pad+1 positions in each axis
on a zero-padded image, and a flip with probability 1/2. All random numbers of an epoch come
from one torch.Generator seeded from (seed, epoch), so an epoch is reproducible on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .common import DatasetInfo, ImageData


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit generator seed that is a pure function of (seed, epoch)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF,
                                    0x48535044]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def _draw(generator: torch.Generator, low: int, high: int, n: int, device: torch.device
          ) -> torch.Tensor:
    """n integers uniform in [low, high), drawn with `generator` and moved to `device`."""
    r = torch.randint(low, high, (n,), generator=generator, device=generator.device)
    return r.to(device, non_blocking=True)


def augment_batch(x_uint8: torch.Tensor, pad: int, hflip: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """Random zero-padded crop (offsets uniform in [0, 2*pad]) + optional flip; uint8 in and out."""
    if x_uint8.ndim != 4:
        raise ValueError(f"expected [B, C, H, W], got {tuple(x_uint8.shape)}")
    b, c, h, w = x_uint8.shape
    dev = x_uint8.device
    if b == 0 or (pad <= 0 and not hflip):
        return x_uint8.clone()
    cols = torch.arange(w, device=dev).expand(b, w)  # source column per output column
    rows = torch.arange(h, device=dev).expand(b, h)
    src = x_uint8
    if pad > 0:
        src = F.pad(x_uint8, (pad, pad, pad, pad))  # zeros, like RandomCrop(padding=pad)
        oy = _draw(generator, 0, 2 * pad + 1, b, dev)
        ox = _draw(generator, 0, 2 * pad + 1, b, dev)
        rows = rows + oy[:, None]
        cols = cols + ox[:, None]
    if hflip:
        flip = _draw(generator, 0, 2, b, dev).bool()
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    # One flat index per output pixel of each image, shared by its channels: a single gather.
    flat = (rows[:, :, None] * src.shape[-1] + cols[:, None, :]).reshape(b, 1, h * w)
    out = src.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w))
    return out.view(b, c, h, w)


def normalize(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]
              ) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 ((x / 255) - mean) / std, per channel."""
    scale, shift = _affine(mean, std, x_uint8.device)
    return torch.addcmul(shift, x_uint8.to(torch.float32), scale)


def _affine(mean: Sequence[float], std: Sequence[float], device: torch.device
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x / 255 normalised = x * scale + shift: one fused multiply-add."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    scale = (1.0 / (255.0 * s)).to(device=device, dtype=torch.float32)
    return scale, (-m / s).to(device=device, dtype=torch.float32)


class BatchLoader:
    """Batches from a uint8 tensor held on the device; augmentation is batch-wise tensor ops, no per-image Python, no workers.

    train=True shuffles each epoch and augments (augment defaults to train); train=False keeps
    the stored order. Call set_epoch(e) before each epoch: the epoch's shuffle and augmentation
    are a pure function of (seed, e), so resuming needs no loader state.
    """

    def __init__(self, data: ImageData, info: DatasetInfo, batch_size: int, *, train: bool,
                 device: torch.device | str = "cpu", seed: int = 0,
                 augment: bool | None = None, drop_last: bool = False) -> None:
        """Move the whole split to `device` once and remember the batching policy."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.info = info
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.augment = self.train if augment is None else bool(augment)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        self.device = torch.device(device)
        self.images = data.images.to(self.device).contiguous()
        self.labels = data.labels.to(self.device)
        self._scale, self._shift = _affine(info.mean, info.std, self.device)

    @property
    def num_samples(self) -> int:
        """Number of samples in the split."""
        return int(self.labels.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle/augmentation the next iteration produces."""
        self.epoch = int(epoch)

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded from (seed, epoch)."""
        return torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 [B, C, H, W] normalised, y int64 [B]) on the device."""
        g = self.generator()
        n = self.num_samples
        order = torch.randperm(n, generator=g).to(self.device) if self.train else None
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min(n, (i + 1) * self.batch_size)
            if order is None:
                xb, yb = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            if self.augment:
                xb = augment_batch(xb, self.info.pad, self.info.hflip, g)
            x = torch.addcmul(self._shift, xb.to(torch.float32), self._scale)
            yield x, yb
