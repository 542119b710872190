"""CIFAR-10 / CIFAR-100 through torchvision's own classes, so the published checksums are verified.

Raw files live in `<root>/<name>/raw/` (torchvision's root): the archive
`cifar-10-python.tar.gz` / `cifar-100-python.tar.gz` and its extracted folder
`cifar-10-batches-py/` / `cifar-100-python/`. Every raw file is checked against torchvision's
md5 list; a corrupt file is refused with a DataError, never used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import DataError, ImageData, network_timeout

MEAN_STD: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def dataset_class(name: str) -> Any:
    """The torchvision class for `name` (looked up at call time, so tests may patch it)."""
    import torchvision.datasets as tvd

    return {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]


def raw_dir(root: str | Path, name: str) -> Path:
    """Folder handed to torchvision as its root."""
    return Path(root) / name / "raw"


def _file_status(cls: Any, raw: Path) -> tuple[list[Path], list[Path]]:
    """(missing, corrupt) raw files, judged by torchvision's own check_integrity."""
    from torchvision.datasets.utils import check_integrity

    missing: list[Path] = []
    corrupt: list[Path] = []
    entries = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    for filename, md5 in entries:
        path = raw / cls.base_folder / filename
        if not path.is_file():
            missing.append(path)
        elif not check_integrity(str(path), md5):
            corrupt.append(path)
    return missing, corrupt


def _by_hand(cls: Any, raw: Path) -> str:
    """How to place the files by hand."""
    return (
        f"download {cls.url} (md5 {cls.tgz_md5}) and put it at {raw / cls.filename}, "
        f"or put the extracted folder at {raw / cls.base_folder}"
    )


def _obtain(name: str, cls: Any, raw: Path, download: bool) -> None:
    """Make the extracted raw files present and intact, or raise a DataError with the fix."""
    from torchvision.datasets.utils import check_integrity, extract_archive

    missing, corrupt = _file_status(cls, raw)
    if corrupt:
        listing = ", ".join(str(p) for p in corrupt)
        raise DataError(
            f"{name}: corrupt file(s) (md5 mismatch with torchvision's published checksums): "
            f"{listing}. Delete {raw / cls.base_folder} and retry "
            f"`hypersparse prepare --dataset {name}` (downloads again), or {_by_hand(cls, raw)}"
        )
    if not missing:
        return
    archive = raw / cls.filename
    if archive.is_file() and check_integrity(str(archive), cls.tgz_md5):
        try:  # placed by hand or downloaded earlier: extract, no network needed
            extract_archive(str(archive), str(raw))
        except Exception as e:
            raise DataError(f"{name}: could not extract {archive} ({e}); {_by_hand(cls, raw)}") from e
    elif not download:
        bad = f" ({archive} has the wrong md5)" if archive.is_file() else ""
        raise DataError(
            f"{name}: raw files missing{bad} and download=False; {_by_hand(cls, raw)}"
        )
    else:
        raw.mkdir(parents=True, exist_ok=True)
        try:
            with network_timeout():
                cls(str(raw), train=True, download=True)
        except Exception as e:  # URLError, timeouts, HTTP errors, bad archive, md5 mismatch
            stale = f" (the existing {archive} has the wrong md5)" if archive.is_file() else ""
            raise DataError(
                f"{name}: download from {cls.url} failed ({type(e).__name__}: {e}){stale}. "
                f"Without network, {_by_hand(cls, raw)}; then rerun "
                f"`hypersparse prepare --dataset {name}`"
            ) from e
    missing, corrupt = _file_status(cls, raw)
    if missing or corrupt:
        listing = ", ".join(str(p) for p in missing + corrupt)
        raise DataError(
            f"{name}: after extracting {archive} these files are missing or corrupt: {listing}. "
            f"Delete {raw} and retry, or {_by_hand(cls, raw)}"
        )


def _to_image_data(ds: Any, num_classes: int) -> ImageData:
    """torchvision's NHWC uint8 array + target list -> NCHW uint8 tensor + int64 labels."""
    data = np.asarray(ds.data)
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[1:] != (32, 32, 3):
        raise DataError(f"unexpected CIFAR array {data.dtype} {data.shape}")
    images = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"labels outside 0..{num_classes - 1} in {ds.root}")
    return ImageData(images, labels)


def build_splits(name: str, root: str | Path, download: bool = True
                 ) -> tuple[ImageData, ImageData, list[str]]:
    """Obtain, verify and load CIFAR `name`: (train, test, class names)."""
    cls = dataset_class(name)
    raw = raw_dir(root, name)
    _obtain(name, cls, raw, download)
    try:
        train_ds = cls(str(raw), train=True, download=False)
        test_ds = cls(str(raw), train=False, download=False)
    except RuntimeError as e:  # torchvision's integrity failure
        raise DataError(
            f"{name}: torchvision refused the files in {raw / cls.base_folder} ({e}); "
            f"delete that folder and retry, or {_by_hand(cls, raw)}"
        ) from e
    n = NUM_CLASSES[name]
    return _to_image_data(train_ds, n), _to_image_data(test_ds, n), list(train_ds.classes)
