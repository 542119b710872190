"""Digits (bundled, no network): conversion, fixed stratified split, statistics, cache handling."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedShuffleSplit

from hypersparse.data import (
    DATASETS,
    DataError,
    dataset_info,
    load_split,
    prepare_dataset,
    prepared_dir,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory):
    """One prepared digits cache shared by the read-only tests of this module."""
    r = tmp_path_factory.mktemp("data")
    prepare_dataset("digits", r)
    return r


def test_shapes_classes_and_dtypes(root) -> None:
    train = load_split("digits", root, "train")
    test = load_split("digits", root, "test")
    assert train.images.shape == (1437, 1, 16, 16) and test.images.shape == (360, 1, 16, 16)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.is_contiguous()
    assert sorted(train.labels.unique().tolist()) == list(range(10))
    assert sorted(test.labels.unique().tolist()) == list(range(10))
    assert int(train.images.max()) > 200  # scaled from 0..16 to 0..255


def test_split_is_stratified_and_matches_documented_sklearn_split(root) -> None:
    bunch = load_digits()
    y = bunch.target
    sss = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    tr_idx, te_idx = next(sss.split(np.zeros(len(y)), y))
    train = load_split("digits", root, "train")
    test = load_split("digits", root, "test")
    assert train.labels.tolist() == y[np.sort(tr_idx)].tolist()
    assert test.labels.tolist() == y[np.sort(te_idx)].tolist()
    total = np.bincount(y, minlength=10)
    in_test = np.bincount(test.labels.numpy(), minlength=10)
    assert np.all(np.abs(in_test - 0.2 * total) <= 1)


def test_pixel_conversion_at_native_size(tmp_path) -> None:
    prepare_dataset("digits", tmp_path, image_size=8)
    train = load_split("digits", tmp_path, "train", image_size=8)
    bunch = load_digits()
    sss = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    tr_idx = np.sort(next(sss.split(np.zeros(len(bunch.target)), bunch.target))[0])
    expected = np.rint(bunch.images[tr_idx] * 255 / 16).astype(np.uint8)
    assert np.array_equal(train.images[:, 0].numpy(), expected)
    # resized variants live in their own folder and keep the same split
    assert prepared_dir("digits", tmp_path, 8).name == "prepared_s8_seed0"


def test_split_fixed_across_roots_and_depends_on_split_seed(root, tmp_path) -> None:
    prepare_dataset("digits", tmp_path / "a")
    a = load_split("digits", tmp_path / "a", "test")
    b = load_split("digits", root, "test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    prepare_dataset("digits", tmp_path / "a", seed=1)
    c = load_split("digits", tmp_path / "a", "test", seed=1)
    assert len(c) == len(b) and not torch.equal(c.images, b.images)


def test_mean_std_from_own_training_split(root) -> None:
    info = dataset_info("digits")
    x = load_split("digits", root, "train").images.double() / 255
    assert info.mean == pytest.approx((float(x.mean()),), abs=1e-12)
    assert info.std == pytest.approx((float(x.std(unbiased=False)),), abs=1e-12)
    meta = json.loads((root / "digits" / "prepared" / "meta.json").read_text())
    assert meta["mean"] == pytest.approx(list(info.mean)) and meta["params"]["split_seed"] == 0
    assert (info.in_channels, info.image_size, info.num_classes) == (1, 16, 10)
    assert (info.pad, info.hflip) == (2, False)
    assert dataset_info("digits", 32).pad == 4


def test_static_info_of_the_other_data_sets() -> None:
    assert DATASETS == ("digits", "cifar10", "cifar100", "tinyimagenet")
    c10, c100, tin = (dataset_info(n) for n in DATASETS[1:])
    assert (c10.num_classes, c100.num_classes, tin.num_classes) == (10, 100, 200)
    assert (c10.image_size, tin.image_size, tin.pad, c10.hflip) == (32, 64, 4, True)
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c100.std == (0.2675, 0.2565, 0.2761)
    assert tin.mean == (0.4802, 0.4481, 0.3975)
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        dataset_info("mnist")
    with pytest.raises(DataError, match="fixed image size"):
        dataset_info("cifar10", 64)


def test_npz_is_plain_arrays(root) -> None:
    with np.load(root / "digits" / "prepared" / "train.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["images", "labels"]
        assert z["images"].dtype == np.uint8 and z["labels"].dtype == np.int64


def test_prepare_is_idempotent_and_leaves_no_temporaries(tmp_path) -> None:
    out = prepare_dataset("digits", tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert sorted(stamps) == ["meta.json", "test.npz", "train.npz"]
    assert prepare_dataset("digits", tmp_path) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_missing_partial_and_corrupt_cache_are_refused_then_rebuilt(tmp_path) -> None:
    with pytest.raises(DataError, match="hypersparse prepare --dataset digits"):
        load_split("digits", tmp_path, "train")
    out = prepare_dataset("digits", tmp_path)
    good = load_split("digits", tmp_path, "train")
    path = out / "train.npz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(DataError, match="hypersparse prepare --dataset digits"):
        load_split("digits", tmp_path, "train")
    path.write_bytes(raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:])  # same size, one bit off
    prepare_dataset("digits", tmp_path)  # hash mismatch -> rebuilt
    assert torch.equal(load_split("digits", tmp_path, "train").images, good.images)
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match="is not prepared"):
        load_split("digits", tmp_path, "test")
    with pytest.raises(DataError, match="unknown split"):
        load_split("digits", tmp_path, "val")


def test_prepare_killed_midway_leaves_no_usable_half_cache(tmp_path, monkeypatch) -> None:
    out = prepare_dataset("digits", tmp_path)
    real_savez = np.savez
    calls = []

    def dying_savez(f, **arrays):  # the process "dies" while writing the second split
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half")
            raise KeyboardInterrupt
        real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez", dying_savez)
    (out / "train.npz").write_bytes(b"stale")  # force a rebuild
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("digits", tmp_path)
    assert not (out / "meta.json").exists()
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    with pytest.raises(DataError):
        load_split("digits", tmp_path, "test")
    monkeypatch.setattr(np, "savez", real_savez)
    prepare_dataset("digits", tmp_path)
    assert len(load_split("digits", tmp_path, "test")) == 360
