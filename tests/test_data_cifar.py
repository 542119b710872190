"""CIFAR-10/100 through the real torchvision classes, from fabricated python batches."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from fabricate import make_cifar_pickles, make_prepared_cifar, patched_cifar_checksums

from hypersparse.data import DataError, load_split, prepare_dataset

CLS = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}


@pytest.fixture
def offline(monkeypatch):
    """The network is unreachable, as on CI: every urlopen fails like a DNS failure would."""
    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    return calls


def _batches(root, name):
    """The fabricated (data rows, labels) per split, read back with pickle like the originals."""
    folder = root / name / "raw" / CLS[name].base_folder
    out = {}
    for split, files in (("train", CLS[name].train_list), ("test", CLS[name].test_list)):
        rows, labels = [], []
        for f, _ in files:
            with open(folder / f, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            rows.append(d[b"data"])
            labels += d[b"labels" if name == "cifar10" else b"fine_labels"]
        out[split] = (np.concatenate(rows), np.array(labels))
    return out


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_prepare_from_fabricated_batches(tmp_path, monkeypatch, offline, name) -> None:
    md5s = make_cifar_pickles(tmp_path, name, n_train=23, n_test=7)
    with patched_cifar_checksums(name, md5s):
        out = prepare_dataset(name, tmp_path, download=True)  # files intact: no download
    assert not offline
    assert out == tmp_path / name / "prepared"
    truth = _batches(tmp_path, name)
    for split, n in (("train", 23), ("test", 7)):
        d = load_split(name, tmp_path, split)
        rows, labels = truth[split]
        assert d.images.shape == (n, 3, 32, 32) and d.images.dtype == torch.uint8
        # NCHW: channel planes of 1024 values each, as in the CIFAR row layout
        assert np.array_equal(d.images.reshape(n, 3072).numpy(), rows)
        assert d.labels.tolist() == labels.tolist()
    # a valid cache is reused without looking at the raw files again
    for p in (tmp_path / name / "raw").rglob("*"):
        if p.is_file():
            p.unlink()
    assert prepare_dataset(name, tmp_path, download=False) == out


def test_fabricated_files_fail_the_published_checksums(tmp_path, offline) -> None:
    make_cifar_pickles(tmp_path, "cifar10", n_train=10, n_test=5)
    with pytest.raises(DataError, match="corrupt file.*md5 mismatch") as e:
        prepare_dataset("cifar10", tmp_path, download=True)
    assert "data_batch_1" in str(e.value) and "Delete" in str(e.value)
    assert not offline  # refused without trying to download
    assert not (tmp_path / "cifar10" / "prepared" / "meta.json").exists()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_corrupted_file_is_detected_and_refused(tmp_path, offline, name) -> None:
    md5s = make_cifar_pickles(tmp_path, name, n_train=10, n_test=5)
    victim = CLS[name].train_list[-1][0]
    path = tmp_path / name / "raw" / CLS[name].base_folder / victim
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0x01  # one flipped bit inside the pixel data
    path.write_bytes(bytes(raw))
    with patched_cifar_checksums(name, md5s), pytest.raises(DataError) as e:
        prepare_dataset(name, tmp_path, download=False)
    msg = str(e.value)
    assert victim in msg and "md5" in msg and str(path.parent) in msg
    assert not (tmp_path / name / "prepared").exists()


def test_offline_download_fails_fast_naming_url_and_folder(tmp_path, offline) -> None:
    t0 = time.monotonic()
    with pytest.raises(DataError) as e:
        prepare_dataset("cifar10", tmp_path, download=True)
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert tvd.CIFAR10.url in msg
    assert str(tmp_path / "cifar10" / "raw" / "cifar-10-batches-py") in msg
    assert str(tmp_path / "cifar10" / "raw" / "cifar-10-python.tar.gz") in msg
    assert offline  # the download was attempted (and failed like a network failure)


def test_missing_files_without_download(tmp_path, offline) -> None:
    with pytest.raises(DataError, match="download=False") as e:
        prepare_dataset("cifar100", tmp_path, download=False)
    assert tvd.CIFAR100.url in str(e.value)
    assert not offline


def _tar_by_hand(tmp_path, name):
    """Pack the fabricated folder into the archive name torchvision expects; drop the folder."""
    raw = tmp_path / name / "raw"
    archive = raw / CLS[name].filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(raw / CLS[name].base_folder, arcname=CLS[name].base_folder)
    for p in (raw / CLS[name].base_folder).iterdir():
        p.unlink()
    (raw / CLS[name].base_folder).rmdir()
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_archive_placed_by_hand_is_verified_and_extracted(tmp_path, monkeypatch, offline) -> None:
    md5s = make_cifar_pickles(tmp_path, "cifar10", n_train=10, n_test=5)
    truth = _batches(tmp_path, "cifar10")
    archive, tgz_md5 = _tar_by_hand(tmp_path, "cifar10")
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", "0" * 32)
    with patched_cifar_checksums("cifar10", md5s), pytest.raises(DataError, match="wrong md5"):
        prepare_dataset("cifar10", tmp_path, download=False)
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", tgz_md5)
    with patched_cifar_checksums("cifar10", md5s):
        prepare_dataset("cifar10", tmp_path, download=False)
    assert not offline
    assert np.array_equal(load_split("cifar10", tmp_path, "test").images.reshape(5, -1).numpy(),
                          truth["test"][0])


def test_make_prepared_cifar_helper_leaves_a_reusable_cache(tmp_path) -> None:
    out = make_prepared_cifar(tmp_path, "cifar10", n_train=12, n_test=4)
    # outside the patch (as in a subprocess) the cache alone is enough
    assert prepare_dataset("cifar10", tmp_path, download=False) == out
    assert len(load_split("cifar10", tmp_path, "train")) == 12
