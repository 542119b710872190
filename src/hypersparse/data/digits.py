"""The bundled scikit-learn digits (1,797 8x8 images, 10 classes): a data set needing no network.

Conversion: pixel values 0..16 -> uint8 0..255 (x * 255 / 16, rounded), then a bilinear
(antialiased) resize to `image_size` (default 16). The train/test split is a fixed stratified
20% test split (sklearn StratifiedShuffleSplit, random_state = split seed, default 0); the split
seed is independent of any training seed. Mean/std come from the split's own training images.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .common import ImageData

DEFAULT_IMAGE_SIZE = 16
DEFAULT_SPLIT_SEED = 0
TEST_FRACTION = 0.2
NUM_CLASSES = 10


def resolve_size(image_size: int | None) -> int:
    """The image size to use (default 16)."""
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 4:
        raise ValueError(f"digits image_size must be >= 4, got {size}")
    return size


def pad_for(image_size: int) -> int:
    """Random-crop padding scaled like CIFAR's 4 px at 32 px (2 px at 16 px)."""
    return max(1, image_size // 8)


def _resize(images8: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N, 8, 8] -> uint8 [N, 1, size, size] with bilinear antialiased interpolation."""
    x = torch.from_numpy(images8).to(torch.float32).unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).contiguous()


@functools.lru_cache(maxsize=16)
def build_splits(image_size: int | None = None, seed: int = DEFAULT_SPLIT_SEED
                 ) -> tuple[ImageData, ImageData]:
    """Deterministic (train, test) splits of the bundled digits; cached per process."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedShuffleSplit

    size = resolve_size(image_size)
    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)  # [N, 8, 8], values 0..16
    images8 = np.clip(np.rint(raw * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=TEST_FRACTION, random_state=seed)
    train_idx, test_idx = next(splitter.split(np.zeros(len(labels)), labels))
    # sorted indices: the stored order does not depend on sklearn's internal shuffling order
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    images = _resize(images8, size)
    lab = torch.from_numpy(labels)
    train = ImageData(images[train_idx].clone(), lab[train_idx].clone())
    test = ImageData(images[test_idx].clone(), lab[test_idx].clone())
    return train, test


@functools.lru_cache(maxsize=16)
def mean_std(image_size: int | None = None, seed: int = DEFAULT_SPLIT_SEED
             ) -> tuple[tuple[float], tuple[float]]:
    """Per-channel mean/std of the [0,1]-scaled training images (population std)."""
    train, _ = build_splits(image_size, seed)
    x = train.images.to(torch.float64) / 255.0
    return (float(x.mean()),), (float(x.std(unbiased=False)),)
