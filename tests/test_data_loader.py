"""On-device batching: augmentation distribution, normalisation, epoch determinism, eval order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from hypersparse.data import BatchLoader, DatasetInfo, ImageData, augment_batch, normalize

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _coded_images(n: int, size: int) -> torch.Tensor:
    """Two channels holding row+1 and column+1 of each pixel (0 is left for padding)."""
    r = torch.arange(1, size + 1, dtype=torch.uint8)
    img = torch.stack([r[:, None].expand(size, size), r[None, :].expand(size, size)])
    return img.expand(n, 2, size, size).contiguous()


def _read_back(out: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recover (row offset, column offset, flipped) from the central pixels of coded crops."""
    size = out.shape[-1]
    i = j = size // 2 - 1
    y = out[:, 0, i, j].long() - 1
    x0, x1 = out[:, 1, i, j].long() - 1, out[:, 1, i, j + 1].long() - 1
    flipped = x1 < x0
    oy = y - i + pad
    ox = torch.where(flipped, x0 - (size - 1 - j) + pad, x0 - j + pad)
    return oy, ox, flipped


def _reference(x: torch.Tensor, oy, ox, flipped, pad: int) -> torch.Tensor:
    """Per-image reference: zero-pad, crop at (oy, ox), flip - a plain loop over images."""
    size = x.shape[-1]
    out = []
    for k in range(x.shape[0]):
        img = F.pad(x[k], (pad, pad, pad, pad))[:, oy[k]:oy[k] + size, ox[k]:ox[k] + size]
        out.append(img.flip(-1) if flipped[k] else img)
    return torch.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad,size", [(4, 16), (2, 8)])
def test_crop_offsets_and_flips_are_uniform_and_independent(device, pad, size) -> None:
    n = 20_000
    x = _coded_images(n, size).to(device)
    out = augment_batch(x, pad, True, torch.Generator().manual_seed(123))
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    oy, ox, flipped = (t.cpu() for t in _read_back(out, pad))
    k = 2 * pad + 1
    assert oy.min() >= 0 and oy.max() < k and ox.min() >= 0 and ox.max() < k
    for counts in (torch.bincount(oy, minlength=k), torch.bincount(ox, minlength=k),
                   torch.bincount(oy * k + ox, minlength=k * k),  # joint: independence
                   torch.bincount(flipped.long() * k + ox, minlength=2 * k)):
        assert chisquare(counts.numpy()).pvalue > 1e-4
    assert abs(flipped.double().mean().item() - 0.5) < 4 * 0.5 / np.sqrt(n)
    # every crop is exactly the zero-padded crop(+flip) at the recovered offsets
    sub = slice(0, 300)
    ref = _reference(x[sub].cpu(), oy[sub], ox[sub], flipped[sub], pad)
    assert torch.equal(out[sub].cpu(), ref)


def test_no_flip_without_hflip_and_identity_without_pad() -> None:
    x = _coded_images(2000, 8)
    g = torch.Generator().manual_seed(0)
    _, _, flipped = _read_back(augment_batch(x, 2, False, g), 2)
    assert not flipped.any()
    assert torch.equal(augment_batch(x, 0, False, g), x)
    assert augment_batch(x[:0], 2, True, g).shape == (0, 2, 8, 8)


def test_normalize_matches_formula() -> None:
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    y = normalize(x, mean, std)
    ref = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    assert y.dtype == torch.float32 and torch.allclose(y.double(), ref, atol=1e-6)


def _data(n: int = 103) -> tuple[ImageData, DatasetInfo]:
    """Random 3x8x8 images with label = index, so every sample is identifiable."""
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    info = DatasetInfo("toy", n, 3, 8, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), pad=2, hflip=True)
    return ImageData(images, torch.arange(n)), info


def _epoch(loader: BatchLoader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches of one epoch, concatenated."""
    loader.set_epoch(epoch)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_eval_loader_fixed_order_every_sample_once_last_partial_batch() -> None:
    data, info = _data(103)
    loader = BatchLoader(data, info, 10, train=False)
    assert len(loader) == 11
    batches = list(loader)
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    x, y = _epoch(loader, 5)
    assert y.tolist() == list(range(103))
    assert torch.allclose(x, normalize(data.images, info.mean, info.std))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    dropped = BatchLoader(data, info, 10, train=False, drop_last=True)
    assert len(dropped) == 10 and sum(len(y) for _, y in dropped) == 100


def test_train_loader_shuffles_augments_and_is_a_function_of_seed_and_epoch() -> None:
    data, info = _data(103)
    a = BatchLoader(data, info, 16, train=True, seed=3)
    b = BatchLoader(data, info, 16, train=True, seed=3)
    xa, ya = _epoch(a, 2)
    _epoch(b, 0)  # b's history must not matter
    xb, yb = _epoch(b, 2)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sorted(ya.tolist()) == list(range(103)) and ya.tolist() != list(range(103))
    x3, y3 = _epoch(a, 3)
    assert not torch.equal(y3, ya)
    _, yc = _epoch(BatchLoader(data, info, 16, train=True, seed=4), 2)
    assert not torch.equal(yc, ya)
    # augmented: at least some samples differ from their plain normalised image
    plain = normalize(data.images, info.mean, info.std)[ya]
    assert not torch.allclose(xa, plain)
    no_aug = BatchLoader(data, info, 16, train=True, seed=3, augment=False)
    xn, yn = _epoch(no_aug, 2)
    assert torch.equal(yn, ya) and torch.allclose(xn, plain)


def test_eval_loader_with_augmentation_keeps_order() -> None:
    data, info = _data(40)
    loader = BatchLoader(data, info, 16, train=False, augment=True, seed=1)
    x, y = _epoch(loader, 0)
    assert y.tolist() == list(range(40))
    assert not torch.allclose(x, normalize(data.images, info.mean, info.std))
    assert torch.equal(x, _epoch(loader, 0)[0]) and not torch.equal(x, _epoch(loader, 1)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_loader_data_lives_on_the_device(device) -> None:
    data, info = _data(20)
    loader = BatchLoader(data, info, 8, train=True, device=device)
    assert loader.images.device.type == device and loader.num_samples == 20
    x, y = next(iter(loader))
    assert x.device.type == device and y.device.type == device and x.shape == (8, 3, 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_and_cpu_give_identical_batches() -> None:
    data, info = _data(50)
    cpu = _epoch(BatchLoader(data, info, 16, train=True, seed=9), 4)
    gpu = _epoch(BatchLoader(data, info, 16, train=True, seed=9, device="cuda"), 4)
    assert torch.equal(cpu[1], gpu[1].cpu()) and torch.allclose(cpu[0], gpu[0].cpu())
