"""Pilot grids on part of a data set: classes, images per class, smaller Tiny ImageNet."""

from __future__ import annotations

import torch
import yaml
from conftest import REPO

from hypersparse.data import dataset_info, load_split, prepare_dataset
from hypersparse.data.common import ImageData
from hypersparse.data.subset import Subset, parse, take, variant_name


def test_names_round_trip():
    assert variant_name("cifar10", 5, 100, None) == "cifar10-c5-n100"
    assert parse("cifar10-c5-n100") == ("cifar10", Subset(5, 100, None))
    assert parse("tinyimagenet-c20-n50-s32") == ("tinyimagenet", Subset(20, 50, 32))
    assert parse("cifar100") == ("cifar100", None)
    assert variant_name("digits", None, None, None) == "digits"


def test_take_first_classes_first_images_per_class_and_resize():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (300,), generator=g)
    images = torch.randint(0, 256, (300, 3, 64, 64), dtype=torch.uint8, generator=g)
    sub = take(ImageData(images, labels), Subset(3, 7, 32), train=True)
    assert torch.equal(torch.bincount(sub.labels, minlength=3), torch.full((3,), 7))
    for c in range(3):  # the first 7 of class c, in stored order
        first = (labels == c).nonzero().squeeze(1)[:7]
        want = torch.nn.functional.interpolate(images[first].float(), size=(32, 32),
                                               mode="area").round().to(torch.uint8)
        assert torch.equal(sub.images[sub.labels == c], want)
    test = take(ImageData(images, labels), Subset(3, 7, None), train=False)
    assert len(test.labels) == int((labels < 3).sum())  # the test split keeps every image


def test_a_subset_cache_is_a_data_set_of_its_own(tmp_path):
    prepare_dataset("digits-c4-n15", tmp_path, download=False, image_size=16)
    train = load_split("digits-c4-n15", tmp_path, "train", image_size=16)
    info = dataset_info("digits-c4-n15", 16, root=tmp_path)
    assert info.num_classes == 4 and torch.equal(torch.bincount(train.labels),
                                                 torch.full((4,), 15))
    assert (tmp_path / "digits-c4-n15" / "prepared" / "meta.json").is_file()
    assert (tmp_path / "digits" / "prepared" / "meta.json").is_file()  # drawn from the base


def test_pilot_config_names_runs_and_refuses_impossible_subsets():
    from hypersparse.config import ConfigError, grid_datasets, run_dir, validate_config

    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    pilot = validate_config({**cfg, "subset": {"classes": 5, "per_class": 100}})
    assert grid_datasets(pilot) == ["digits-c5-n100"]
    assert "/runs/digits-c5-n100/resnet8/omp/k0.9/seed0" in run_dir(pilot, "digits-c5-n100",
                                                                    "resnet8", "omp", 0.9, 0)
    for bad, needle in (({"classes": 50}, "classes must be in 2..10"),
                        ({"image_size": 8}, "tinyimagenet only")):
        try:
            validate_config({**cfg, "subset": bad})
        except ConfigError as exc:
            assert needle in str(exc)
        else:
            raise AssertionError(bad)


def test_estimate_scales_a_subset_by_its_images():
    from hypersparse.estimate import epoch_seconds

    table = {("resnet32", "cifar10", "gpu"): (10.0, "measured")}
    assert epoch_seconds(table, "resnet32", "cifar10", "gpu") == (10.0, "measured")
    sec, status = epoch_seconds(table, "resnet32", "cifar10-c5-n500", "gpu")
    assert status == "extrapolated" and abs(sec - 10.0 * 2_500 / 50_000) < 1e-9
