"""Fabricate tiny data sets in their genuine on-disk formats, for tests of any room.

Use from a test module (tests/ is on sys.path under pytest):
    from fabricate import make_cifar_pickles, patched_cifar_checksums, make_tinyimagenet_zip

- CIFAR: python pickles as the official archives hold them (Python-2 pickles, protocol 2,
  whose str values load as str with encoding='latin1' - torchvision's way - and as bytes,
  e.g. b'data', with encoding='bytes'), in `<root>/<name>/raw/<base_folder>/`, the folder
  hypersparse.data hands to torchvision. torchvision checks each file's md5 against the
  published ones, so tests patch the class's md5 lists with `patched_cifar_checksums`;
  the real integrity check and loader then run unchanged.
- Tiny ImageNet: a zip with the official tree (wnids.txt, words.txt, train/<wnid>/images,
  train/<wnid>/<wnid>_boxes.txt, val/images, val/val_annotations.txt, test/images).
- `make_prepared_cifar(root, ...)`: fabricates CIFAR and runs the real prepare_dataset in
  this process, leaving a valid `<root>/<name>/prepared/` cache that subprocesses (CLI,
  Snakemake) reuse without checksums (the cache is checked by its own hashes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import struct
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickler writing str/bytes as Python-2 `str` (SHORT_BINSTRING/BINSTRING), like the originals."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str | bytes) -> None:
        """Emit one Python-2 byte string."""
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def _py2_pickle(obj: Any, path: Path) -> str:
    """Write `obj` as a protocol-2 Python-2 style pickle; return the file's md5."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())
    return hashlib.md5(buf.getvalue()).hexdigest()


def cifar_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random uint8 images in the CIFAR row layout: N x 3072 (R plane, G plane, B plane)."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def make_cifar_pickles(root: str | Path, name: str = "cifar10", n_train: int = 50,
                       n_test: int = 20, seed: int = 0) -> dict[str, str]:
    """Write fabricated CIFAR-10/100 python batches under `<root>/<name>/raw/`; return {file: md5}.

    Labels cycle through the classes (so every class occurs once n >= classes); images are
    random. CIFAR-10 splits the training set over data_batch_1..5 (sizes may differ by one).
    """
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder = Path(root) / name / "raw" / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        md5s: dict[str, str] = {}
        chunks = np.array_split(np.arange(n_train), 5)
        for b, idx in enumerate(chunks, 1):
            md5s[f"data_batch_{b}"] = _py2_pickle({
                "batch_label": f"training batch {b} of 5",
                "labels": [int(i % 10) for i in idx],
                "data": cifar_images(len(idx), rng),
                "filenames": [f"img_{int(i):05d}.png" for i in idx],
            }, folder / f"data_batch_{b}")
        md5s["test_batch"] = _py2_pickle({
            "batch_label": "testing batch 1 of 1",
            "labels": [int(i % 10) for i in range(n_test)],
            "data": cifar_images(n_test, rng),
            "filenames": [f"test_{i:05d}.png" for i in range(n_test)],
        }, folder / "test_batch")
        md5s["batches.meta"] = _py2_pickle({
            "num_cases_per_batch": int(len(chunks[0])),
            "label_names": list(CIFAR10_CLASSES),
            "num_vis": 3072,
        }, folder / "batches.meta")
        return md5s
    if name == "cifar100":
        folder = Path(root) / name / "raw" / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        md5s = {}
        for split, n in (("train", n_train), ("test", n_test)):
            fine = [int(i % 100) for i in range(n)]
            md5s[split] = _py2_pickle({
                "filenames": [f"{split}_{i:05d}.png" for i in range(n)],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": cifar_images(n, rng),
            }, folder / split)
        md5s["meta"] = _py2_pickle({
            "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
        }, folder / "meta")
        return md5s
    raise ValueError(f"unknown CIFAR name {name!r}")


@contextlib.contextmanager
def patched_cifar_checksums(name: str, md5s: dict[str, str]) -> Iterator[None]:
    """Within the block, torchvision's CIFAR class expects the fabricated files' md5s."""
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    train = [[f, md5s[f]] for f, _ in cls.train_list]
    test = [[f, md5s[f]] for f, _ in cls.test_list]
    meta = dict(cls.meta, md5=md5s[cls.meta["filename"]])
    with (mock.patch.object(cls, "train_list", train), mock.patch.object(cls, "test_list", test),
          mock.patch.object(cls, "meta", meta)):
        yield


def make_prepared_cifar(root: str | Path, name: str = "cifar10", n_train: int = 50,
                        n_test: int = 20, seed: int = 0) -> Path:
    """Fabricate CIFAR and run the real prepare_dataset on it; return the prepared folder."""
    from hypersparse.data import prepare_dataset

    md5s = make_cifar_pickles(root, name, n_train, n_test, seed)
    with patched_cifar_checksums(name, md5s):
        return prepare_dataset(name, root, download=False)


def class_colour(k: int) -> tuple[int, int, int]:
    """A distinct solid colour per class index, recognisable after JPEG compression."""
    return ((k * 80) % 256, (k * 140 + 60) % 256, (k * 200 + 120) % 256)


def _jpeg(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 64) -> bytes:
    """A small JPEG: a solid colour with mild noise."""
    from PIL import Image

    arr = np.empty((size, size, 3), dtype=np.int16)
    arr[:] = colour
    arr += rng.integers(-6, 7, size=arr.shape, dtype=np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_tinyimagenet_zip(path: str | Path,
                          wnids: Sequence[str] = ("n01443537", "n01629819", "n01641577"),
                          n_train_per_class: int = 3, n_val_per_class: int = 2,
                          n_test: int = 2, seed: int = 0,
                          omit_train: Sequence[str] = ()) -> str:
    """Write a fabricated tiny-imagenet-200.zip at `path`; return its md5.

    The image of class k (k = position of its wnid in sorted order) has colour class_colour(k).
    wnids.txt lists the wnids in the given order; val images are numbered in shuffled class
    order as in the original. Classes in `omit_train` get no train/<wnid>/ folder (a broken tree).
    """
    rng = np.random.default_rng(seed)
    order = sorted(wnids)
    top = "tiny-imagenet-200"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{top}/wnids.txt", "".join(f"{w}\n" for w in wnids))
        z.writestr(f"{top}/words.txt", "".join(f"{w}\tthing number {i}\n"
                                               for i, w in enumerate(order)))
        for w in wnids:
            if w in omit_train:
                continue
            k = order.index(w)
            boxes = []
            for j in range(n_train_per_class):
                fname = f"{w}_{j}.JPEG"
                z.writestr(f"{top}/train/{w}/images/{fname}", _jpeg(class_colour(k), rng))
                boxes.append(f"{fname}\t0\t0\t63\t63\n")
            z.writestr(f"{top}/train/{w}/{w}_boxes.txt", "".join(boxes))
        val_classes = [w for w in wnids for _ in range(n_val_per_class)]
        ann = []
        for i in rng.permutation(len(val_classes)).tolist():
            fname = f"val_{len(ann)}.JPEG"
            w = val_classes[i]
            z.writestr(f"{top}/val/images/{fname}", _jpeg(class_colour(order.index(w)), rng))
            ann.append(f"{fname}\t{w}\t0\t0\t63\t63\n")
        z.writestr(f"{top}/val/val_annotations.txt", "".join(ann))
        for t in range(n_test):
            z.writestr(f"{top}/test/images/test_{t}.JPEG", _jpeg((128, 128, 128), rng))
    return hashlib.md5(path.read_bytes()).hexdigest()
