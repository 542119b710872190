"""Models: names, prunable weight counts from PAPER_NOTES.md, shapes, init and determinism."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from hypersparse.masks import prunable_weights
from hypersparse.models import build_model, is_valid_model_name, parse_model_name


def count(model: nn.Module) -> int:
    """Number of prunable (Conv2d + Linear) weights."""
    return sum(w.numel() for w in prunable_weights(model))


@pytest.mark.parametrize(
    "name,classes,expected",
    [
        ("resnet32", 10, 1_855_584),
        ("resnet32", 100, 1_867_104),
        ("resnet32", 200, 1_879_904),
        ("vgg19", 10, 20_024_000),
        ("vgg19", 100, 20_070_080),
        ("vgg19", 200, 20_121_280),
    ],
)
def test_prunable_counts_match_paper_notes(name: str, classes: int, expected: int) -> None:
    assert count(build_model(name, classes)) == expected


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "vgg11", "vgg19"])
@pytest.mark.parametrize("px", [16, 32, 64])
def test_forward_shapes(name: str, px: int) -> None:
    model = build_model(name, 7, width=0.25)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, px, px))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet14", "vgg13", "vgg16"])
def test_one_channel_16px_digits_train_step(name: str) -> None:
    model = build_model(name, 10, in_channels=1, width=0.25)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in prunable_weights(model))


def test_width_scales_channels() -> None:
    model = build_model("resnet8", 10, width=0.25)
    assert model.conv1.out_channels == 8 and model.fc.in_features == 32
    vgg = build_model("vgg11", 10, width=0.5)
    assert vgg.classifier.in_features == 256
    assert build_model("resnet8", 3, width=0.001).conv1.out_channels == 1  # at least 1


def test_vgg_final_map_is_pooled_like_reference() -> None:
    """At 32 px the last feature map is 2x2 (AvgPool2d(2) in the authors' code), 4x4 at 64."""
    vgg = build_model("vgg19", 10, width=0.125).eval()
    for px, side in [(32, 2), (64, 4)]:
        with torch.no_grad():
            feats = vgg.features(torch.randn(1, 3, px, px))
        assert feats.shape[-2:] == (side, side)
        ref = vgg.classifier(nn.functional.avg_pool2d(feats, side).flatten(1))
        assert torch.allclose(ref, vgg.classifier(vgg.pool(feats).flatten(1)))


def test_resnet_layout() -> None:
    model = build_model("resnet32", 10)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 5
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    shortcuts = [c for c in convs if c.kernel_size == (1, 1)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in shortcuts] == [
        (32, 64, (2, 2)),
        (64, 128, (2, 2)),
    ]
    assert model.fc.in_features == 128


def test_init_statistics() -> None:
    torch.manual_seed(0)
    for name in ["resnet32", "vgg19"]:
        model = build_model(name, 100)
        fc = [m for m in model.modules() if isinstance(m, nn.Linear)][0]
        assert abs(fc.weight.std().item() - 0.01) < 0.001
        assert torch.all(fc.bias == 0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                assert torch.all(m.bias == 0)
    vgg = build_model("vgg19", 10)
    conv = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)][5]  # 256 -> 256
    assert abs(conv.weight.std().item() - (2 / (9 * conv.in_channels)) ** 0.5) < 0.002
    res = build_model("resnet32", 10)
    conv = res.layer3[1].conv1  # kaiming fan_out: std = sqrt(2 / (9 * out_channels))
    assert abs(conv.weight.std().item() - (2 / (9 * conv.out_channels)) ** 0.5) < 0.002


def test_same_seed_same_weights() -> None:
    for name in ["resnet20", "vgg11"]:
        torch.manual_seed(3)
        a = build_model(name, 10).state_dict()
        torch.manual_seed(3)
        b = build_model(name, 10).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        torch.manual_seed(4)
        c = build_model(name, 10).state_dict()
        first_conv = next(k for k, v in a.items() if v.dim() == 4)
        assert not torch.equal(a[first_conv], c[first_conv])


@pytest.mark.parametrize(
    "name,message",
    [
        ("resnet33", "ResNet depth must be 6n+2, e.g. 8, 14, 20, 32, 56"),
        ("resnet2", "ResNet depth must be 6n+2"),
        ("vgg17", "VGG depth must be 11, 13, 16 or 19"),
        ("densenet121", "unknown model name"),
        ("resnet", "unknown model name"),
    ],
)
def test_invalid_names_raise(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(name, 10)
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_model_name(name)
    assert not is_valid_model_name(name)


def test_parse_valid_names() -> None:
    assert parse_model_name("resnet32") == ("resnet", 32)
    assert parse_model_name("ResNet56") == ("resnet", 56)
    assert parse_model_name("vgg19") == ("vgg", 19)
    assert all(is_valid_model_name(n) for n in ["resnet8", "resnet14", "vgg11", "vgg16"])


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        build_model("resnet8", 0)
    with pytest.raises(ValueError):
        build_model("resnet8", 10, width=0.0)
