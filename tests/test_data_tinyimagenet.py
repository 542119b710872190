"""Tiny ImageNet from a fabricated official-format zip placed in the data root by hand."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from fabricate import class_colour, make_tinyimagenet_zip

from hypersparse.data import DataError, load_split, prepare_dataset
from hypersparse.data import tinyimagenet as tin

WNIDS = ("n02909870", "n01443537", "n04067472")  # deliberately unsorted in wnids.txt


@pytest.fixture
def offline(monkeypatch):
    """The network is unreachable: every urlopen fails like a DNS failure would."""
    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    return calls


def _place_zip(root, monkeypatch, **kw):
    """Put a fabricated zip where a user would, and make its md5 the expected one."""
    md5 = make_tinyimagenet_zip(root / "tinyimagenet" / "raw" / "tiny-imagenet-200.zip", **kw)
    monkeypatch.setattr(tin, "TINYIMAGENET_MD5", md5)
    return md5


def _nearest_class(images: torch.Tensor, n_classes: int) -> list[int]:
    """Class whose fabricated colour is closest to each image's mean colour."""
    means = images.double().mean(dim=(2, 3))
    colours = torch.tensor([class_colour(k) for k in range(n_classes)], dtype=torch.float64)
    return torch.cdist(means, colours).argmin(1).tolist()


def test_prepare_from_zip_placed_by_hand(tmp_path, monkeypatch, offline) -> None:
    _place_zip(tmp_path, monkeypatch, wnids=WNIDS, n_train_per_class=3, n_val_per_class=2)
    out = prepare_dataset("tinyimagenet", tmp_path, download=True)
    assert not offline
    train = load_split("tinyimagenet", tmp_path, "train")
    test = load_split("tinyimagenet", tmp_path, "test")
    assert train.images.shape == (9, 3, 64, 64) and test.images.shape == (6, 3, 64, 64)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    # labels follow the sorted wnids: the colour of class k is class_colour(k)
    assert _nearest_class(train.images, 3) == train.labels.tolist()
    assert _nearest_class(test.images, 3) == test.labels.tolist()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == sorted(WNIDS) and meta["test_split_is"] == "val"
    # val images were sorted into class folders once
    val = tmp_path / "tinyimagenet" / "raw" / "tiny-imagenet-200" / "val"
    assert not (val / "images").exists()
    for w in WNIDS:
        assert len(list((val / w).glob("*.JPEG"))) == 2


def test_idempotent_and_rebuild_from_tree_is_identical(tmp_path, monkeypatch) -> None:
    _place_zip(tmp_path, monkeypatch, wnids=WNIDS)
    out = prepare_dataset("tinyimagenet", tmp_path, download=False)
    first = load_split("tinyimagenet", tmp_path, "test")
    stamp = (out / "test.npz").stat().st_mtime_ns
    assert prepare_dataset("tinyimagenet", tmp_path, download=False) == out
    assert (out / "test.npz").stat().st_mtime_ns == stamp
    (out / "meta.json").unlink()  # cache gone: rebuilt from the already sorted tree
    prepare_dataset("tinyimagenet", tmp_path, download=False)
    again = load_split("tinyimagenet", tmp_path, "test")
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)


def test_val_sorting_resumes_after_interruption(tmp_path, monkeypatch) -> None:
    _place_zip(tmp_path, monkeypatch, wnids=WNIDS)
    tree = tin.obtain_tree(tmp_path, download=False)
    ann = (tree / "val" / "val_annotations.txt").read_text().splitlines()
    fname, wnid = ann[0].split("\t")[:2]  # as if killed after moving one file
    (tree / "val" / wnid).mkdir()
    os.replace(tree / "val" / "images" / fname, tree / "val" / wnid / fname)
    tin.sort_val(tree, tin.read_wnids(tree))
    tin.sort_val(tree, tin.read_wnids(tree))
    assert sum(len(list((tree / "val" / w).iterdir())) for w in WNIDS) == len(ann)


def test_expected_md5_argument(tmp_path) -> None:
    md5 = make_tinyimagenet_zip(tmp_path / "tinyimagenet" / "raw" / "tiny-imagenet-200.zip")
    train, test, wnids = tin.build_splits(tmp_path, download=False, expected_md5=md5)
    assert len(train) == 9 and len(test) == 6 and len(wnids) == 3


def test_wrong_md5_is_refused(tmp_path, monkeypatch, offline) -> None:
    md5 = make_tinyimagenet_zip(tmp_path / "tinyimagenet" / "raw" / "tiny-imagenet-200.zip")
    with pytest.raises(DataError, match="checksum mismatch") as e:  # real md5 expected
        prepare_dataset("tinyimagenet", tmp_path, download=True)
    assert md5 in str(e.value) and tin.TINYIMAGENET_MD5 in str(e.value)
    assert not offline
    assert not (tmp_path / "tinyimagenet" / "raw" / "tiny-imagenet-200").exists()


def test_missing_class_is_named(tmp_path, monkeypatch) -> None:
    _place_zip(tmp_path, monkeypatch, wnids=WNIDS, omit_train=("n04067472",))
    with pytest.raises(DataError, match="class n04067472"):
        prepare_dataset("tinyimagenet", tmp_path, download=False)
    assert not (tmp_path / "tinyimagenet" / "prepared" / "meta.json").exists()


def test_offline_download_fails_fast_with_url(tmp_path, offline) -> None:
    t0 = time.monotonic()
    with pytest.raises(DataError) as e:
        prepare_dataset("tinyimagenet", tmp_path, download=True)
    assert time.monotonic() - t0 < 5 and offline
    msg = str(e.value)
    assert tin.TINYIMAGENET_URL in msg
    assert str(tmp_path / "tinyimagenet" / "raw" / "tiny-imagenet-200.zip") in msg
    assert not (tmp_path / "tinyimagenet" / "raw" / "tiny-imagenet-200.zip").exists()
    with pytest.raises(DataError, match="download=False"):
        prepare_dataset("tinyimagenet", tmp_path, download=False)


def test_fabricated_zip_has_the_official_layout(tmp_path) -> None:
    import zipfile

    path = tmp_path / "t.zip"
    make_tinyimagenet_zip(path, wnids=WNIDS, n_test=2)
    names = set(zipfile.ZipFile(path).namelist())
    top = "tiny-imagenet-200"
    for w in WNIDS:
        assert f"{top}/train/{w}/{w}_boxes.txt" in names
        assert f"{top}/train/{w}/images/{w}_0.JPEG" in names
    assert {f"{top}/wnids.txt", f"{top}/words.txt", f"{top}/val/val_annotations.txt",
            f"{top}/test/images/test_0.JPEG", f"{top}/val/images/val_0.JPEG"} <= names
    assert np.all([n.startswith(top + "/") for n in names])
