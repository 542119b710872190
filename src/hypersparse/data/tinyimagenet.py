"""Tiny ImageNet (200 classes, 64x64 RGB) from the official zip; its `val` split is our test split.

Raw files live in `<root>/tinyimagenet/raw/`: the zip `tiny-imagenet-200.zip` (md5 checked)
and the extracted tree `tiny-imagenet-200/`. Extraction goes to a temporary folder that is
renamed when complete, so a tree at the final path is never half extracted. The val images are
moved once into `val/<wnid>/` folders using `val/val_annotations.txt` (idempotent, resumable).
Labels are the positions of the wnids in sorted order.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .common import DataError, ImageData, md5_file, network_timeout

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
ZIP_NAME = "tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
IMAGE_SIZE = 64
NUM_CLASSES = 200
MEAN = (0.4802, 0.4481, 0.3975)
STD = (0.2770, 0.2691, 0.2821)


def raw_dir(root: str | Path) -> Path:
    """Folder holding the zip and the extracted tree."""
    return Path(root) / "tinyimagenet" / "raw"


def _by_hand(raw: Path, url: str, md5: str) -> str:
    """How to place the files by hand."""
    return (
        f"download {url} (md5 {md5}) and put it at {raw / ZIP_NAME}, "
        f"or put the extracted folder at {raw / FOLDER}"
    )


def _download(raw: Path, url: str, md5: str) -> None:
    """Download the zip to a .part file, verify its md5, then rename it into place."""
    from torchvision.datasets.utils import download_url

    raw.mkdir(parents=True, exist_ok=True)
    part = ZIP_NAME + ".part"
    try:
        with network_timeout():
            download_url(url, str(raw), filename=part, md5=md5)
    except Exception as e:  # URLError, timeouts, HTTP errors, md5 mismatch
        raise DataError(
            f"tinyimagenet: download from {url} failed ({type(e).__name__}: {e}). "
            f"Without network, {_by_hand(raw, url, md5)}; then rerun "
            "`hypersparse prepare --dataset tinyimagenet`"
        ) from e
    os.replace(raw / part, raw / ZIP_NAME)


def _extract(raw: Path, url: str, md5: str) -> None:
    """Extract the verified zip into a temporary folder, then rename the tree into place."""
    from torchvision.datasets.utils import extract_archive

    tmp = raw / f".extract.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        extract_archive(str(raw / ZIP_NAME), str(tmp))
        if not (tmp / FOLDER).is_dir():
            raise DataError(
                f"tinyimagenet: {raw / ZIP_NAME} has no top-level folder {FOLDER}/; "
                f"{_by_hand(raw, url, md5)}"
            )
        os.replace(tmp / FOLDER, raw / FOLDER)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"tinyimagenet: could not extract {raw / ZIP_NAME} ({e}); delete it and retry, "
            f"or {_by_hand(raw, url, md5)}"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def obtain_tree(root: str | Path, download: bool = True, expected_md5: str | None = None,
                url: str | None = None) -> Path:
    """Return the extracted tree, extracting (and downloading if allowed) the verified zip."""
    md5 = expected_md5 or TINYIMAGENET_MD5
    url = url or TINYIMAGENET_URL
    raw = raw_dir(root)
    tree = raw / FOLDER
    if tree.is_dir():
        return tree
    archive = raw / ZIP_NAME
    if archive.is_file():
        actual = md5_file(archive)
        if actual != md5:
            raise DataError(
                f"tinyimagenet: checksum mismatch for {archive}: md5 {actual}, expected {md5} "
                f"(partial or wrong file). Delete it and retry, or {_by_hand(raw, url, md5)}"
            )
    elif download:
        _download(raw, url, md5)
    else:
        raise DataError(
            f"tinyimagenet: {archive} not found and download=False; {_by_hand(raw, url, md5)}"
        )
    _extract(raw, url, md5)
    return tree


def read_wnids(tree: Path) -> list[str]:
    """Class ids from wnids.txt, in sorted order (the label order)."""
    path = tree / "wnids.txt"
    if not path.is_file():
        raise DataError(f"tinyimagenet: {path} is missing; the tree is incomplete")
    wnids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    if not wnids:
        raise DataError(f"tinyimagenet: {path} lists no classes")
    return wnids


def sort_val(tree: Path, wnids: list[str]) -> None:
    """Move val/images/<f> to val/<wnid>/<f> per val_annotations.txt (idempotent, resumable)."""
    val = tree / "val"
    ann = val / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"tinyimagenet: {ann} is missing; the tree is incomplete")
    known = set(wnids)
    images = val / "images"
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2:
            raise DataError(f"tinyimagenet: {ann}:{lineno} is malformed: {line!r}")
        fname, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in known:
            raise DataError(f"tinyimagenet: {ann}:{lineno} names class {wnid} not in wnids.txt")
        dst = val / wnid / fname
        if dst.is_file():
            continue
        src = images / fname
        if not src.is_file():
            raise DataError(f"tinyimagenet: val image {src} (class {wnid}) is missing")
        dst.parent.mkdir(exist_ok=True)
        os.replace(src, dst)
    if images.is_dir() and not any(images.iterdir()):
        images.rmdir()


def _class_files(tree: Path, wnids: list[str]) -> tuple[list[Path], list[int], list[Path],
                                                        list[int]]:
    """Sorted image paths and labels of train and val; DataError naming a missing class."""
    train_files: list[Path] = []
    train_labels: list[int] = []
    val_files: list[Path] = []
    val_labels: list[int] = []
    for label, wnid in enumerate(wnids):
        tdir = tree / "train" / wnid / "images"
        tf = sorted(tdir.glob("*.JPEG")) if tdir.is_dir() else []
        if not tf:
            raise DataError(
                f"tinyimagenet: class {wnid} (listed in wnids.txt) has no training images in "
                f"{tdir}; the tree is incomplete. Delete {tree} and prepare again from the zip"
            )
        vf = sorted((tree / "val" / wnid).glob("*.JPEG"))
        if not vf:
            raise DataError(
                f"tinyimagenet: class {wnid} has no val images in {tree / 'val' / wnid}; "
                f"the tree is incomplete. Delete {tree} and prepare again from the zip"
            )
        train_files += tf
        train_labels += [label] * len(tf)
        val_files += vf
        val_labels += [label] * len(vf)
    return train_files, train_labels, val_files, val_labels


def _read_images(files: list[Path], labels: list[int]) -> ImageData:
    """Decode JPEGs with PIL into uint8 NCHW."""
    from PIL import Image

    out = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise DataError(f"tinyimagenet: cannot decode {path} ({e})") from e
        if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise DataError(f"tinyimagenet: {path} is {arr.shape[1]}x{arr.shape[0]}, not 64x64")
        out[i] = arr
    images = torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))
    return ImageData(images, torch.tensor(labels, dtype=torch.int64))


def build_splits(root: str | Path, download: bool = True, expected_md5: str | None = None,
                 url: str | None = None) -> tuple[ImageData, ImageData, list[str]]:
    """Obtain, verify, sort and decode Tiny ImageNet: (train, test=val, sorted wnids)."""
    tree = obtain_tree(root, download, expected_md5, url)
    wnids = read_wnids(tree)
    sort_val(tree, wnids)
    tf, tl, vf, vl = _class_files(tree, wnids)
    return _read_images(tf, tl), _read_images(vf, vl), wnids
