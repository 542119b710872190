"""Data sets by name: static facts, one-time preparation into a cache, and loading a split.

Cache layout: `<root>/<name>/prepared/{train,test}.npz` (arrays `images` uint8 NCHW and
`labels` int64, loadable with allow_pickle=False) plus `meta.json`, written last, which records
each file's size and SHA-256. For digits with a non-default image size or split seed the folder
is `prepared_s<size>_seed<seed>` so different variants never overwrite each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import cifar, digits, subset, tinyimagenet
from .common import (
    DataError,
    DatasetInfo,
    ImageData,
    cache_is_valid,
    read_split,
    write_cache,
)
from .names import DATASETS, NATIVE_SIZE, base_name, is_resizable


def _check_name(name: str) -> None:
    """DataError for an unknown data set name (a pilot subset name counts by its base)."""
    base, sub = subset.parse(name)
    if base not in DATASETS:
        raise DataError(f"unknown data set '{name}' (choose one of {', '.join(DATASETS)}, "
                        "optionally with a pilot-subset suffix such as -c5-n100)")
    if sub is not None:
        info = dataset_info(base)
        subset.check(base, sub, info.num_classes, info.image_size)


def _check_size(name: str, image_size: int | None) -> None:
    """Only resizable data sets (digits) take an image size; others accept None or their
    native size."""
    name = base_name(name)
    if not is_resizable(name) and image_size not in (None, NATIVE_SIZE[name]):
        raise DataError(
            f"{name} has fixed image size {NATIVE_SIZE[name]}; image_size={image_size} is not "
            "supported"
        )


def dataset_info(name: str, image_size: int | None = None, seed: int = 0,
                 root: str | Path | None = None) -> DatasetInfo:
    """Static facts about `name`; for digits, `image_size` (default 16) and split `seed` matter.

    With `root`, digits' mean/std come from the prepared cache's meta.json when it exists
    (saves recomputing the split, and importing scikit-learn, in every training process).
    """
    _check_name(name)
    _check_size(name, image_size)
    base, sub = subset.parse(name)
    if sub is not None:
        b = dataset_info(base, image_size, seed, root=root)
        return DatasetInfo(name, sub.classes or b.num_classes, b.in_channels,
                           sub.size or b.image_size, b.mean, b.std, pad=b.pad, hflip=b.hflip)
    if name == "digits":
        size = digits.resolve_size(image_size)
        mean, std = _cached_mean_std(name, root, image_size, seed) or digits.mean_std(size, seed)
        return DatasetInfo("digits", digits.NUM_CLASSES, 1, size, mean, std,
                           pad=digits.pad_for(size), hflip=False)
    if name in cifar.MEAN_STD:
        mean, std = cifar.MEAN_STD[name]
        return DatasetInfo(name, cifar.NUM_CLASSES[name], 3, 32, mean, std, pad=4, hflip=True)
    return DatasetInfo("tinyimagenet", tinyimagenet.NUM_CLASSES, 3, tinyimagenet.IMAGE_SIZE,
                       tinyimagenet.MEAN, tinyimagenet.STD, pad=4, hflip=True)


def _cached_mean_std(name: str, root: str | Path | None, image_size: int | None,
                     seed: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if root is None:
        return None
    meta_path = prepared_dir(name, root, image_size, seed) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("params") != _params(name, image_size, seed):
            return None
        return tuple(meta["mean"]), tuple(meta["std"])
    except (OSError, ValueError, KeyError):
        return None


def _params(name: str, image_size: int | None, seed: int) -> dict[str, Any]:
    """The parameters a cache depends on (recorded in meta.json)."""
    base, sub = subset.parse(name)
    if sub is not None:
        return {**_params(base, image_size, seed),
                "subset": [sub.classes, sub.per_class, sub.size]}
    if name == "digits":
        return {"image_size": digits.resolve_size(image_size), "split_seed": int(seed),
                "test_fraction": digits.TEST_FRACTION}
    return {}


def prepared_dir(name: str, root: str | Path, image_size: int | None = None,
                 seed: int = 0) -> Path:
    """Folder of the prepared cache of `name` (variant-specific for digits)."""
    _check_name(name)
    base = Path(root) / name
    if name == "digits":
        size = digits.resolve_size(image_size)
        if (size, seed) != (digits.DEFAULT_IMAGE_SIZE, digits.DEFAULT_SPLIT_SEED):
            return base / f"prepared_s{size}_seed{seed}"
    return base / "prepared"


def prepare_dataset(name: str, root: str | Path, download: bool = True,
                    image_size: int | None = None, seed: int = 0) -> Path:
    """Download (if allowed), verify and convert `name` once into its cache; return the folder.

    Idempotent: a cache whose meta.json and file hashes check out is reused untouched.
    `seed` is the digits split seed (independent of any training seed); others ignore it.
    """
    _check_name(name)
    _check_size(name, image_size)
    info = dataset_info(name, image_size, seed, root=root)
    out = prepared_dir(name, root, image_size, seed)
    params = _params(name, image_size, seed)
    if cache_is_valid(out, name, params):
        return out
    extra: dict[str, Any] = {}
    base, sub = subset.parse(name)
    if sub is not None:  # a pilot subset, drawn from the base data set's cache
        prepare_dataset(base, root, download, image_size, seed)
        splits = {split: subset.take(load_split(base, root, split, image_size, seed), sub,
                                     split == "train") for split in ("train", "test")}
        extra = {"source": f"subset of {base}: {sub.describe()}", "subset_of": base}
        write_cache(out, info, splits, params, extra)
        return out
    if name == "digits":
        train, test = digits.build_splits(info.image_size, seed)
        extra["classes"] = [str(i) for i in range(10)]
        extra["source"] = "sklearn.datasets.load_digits"
    elif name in cifar.NUM_CLASSES:
        train, test, classes = cifar.build_splits(name, root, download)
        extra["classes"] = classes
        extra["source"] = cifar.dataset_class(name).url
    else:
        train, test, wnids = tinyimagenet.build_splits(root, download)
        extra["classes"] = wnids
        extra["source"] = tinyimagenet.TINYIMAGENET_URL
        extra["test_split_is"] = "val"
    write_cache(out, info, {"train": train, "test": test}, params, extra)
    return out


def load_split(name: str, root: str | Path, split: str, image_size: int | None = None,
               seed: int = 0) -> ImageData:
    """Read split 'train' or 'test' from the prepared cache (DataError if missing/corrupt)."""
    _check_name(name)
    _check_size(name, image_size)
    out = prepared_dir(name, root, image_size, seed)
    data = read_split(out, name, root, split)
    info = dataset_info(name, image_size, seed, root=root)
    if tuple(data.images.shape[1:]) != (info.in_channels, info.image_size, info.image_size):
        raise DataError(
            f"{out}: images are {tuple(data.images.shape[1:])}, expected "
            f"{(info.in_channels, info.image_size, info.image_size)}; delete {out} and "
            f"run `hypersparse prepare --dataset {name}`"
        )
    return data
