"""Shared types, errors and the on-disk cache format of the prepared data sets."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError

#: Version of the prepared-cache layout; bump it when the layout or a conversion changes.
CACHE_FORMAT = 1
SPLITS: tuple[str, ...] = ("train", "test")
#: Per-socket-operation timeout (s) while downloading, so an offline machine fails fast.
NETWORK_TIMEOUT_S = 30.0


class DataError(UserError, RuntimeError):
    """A user-facing data problem; the message names the problem and how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set: shape, classes, normalisation and augmentation."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    hflip: bool


@dataclass
class ImageData:
    """One split held in memory: uint8 images [N, C, H, W] and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        """Validate dtypes and shapes once, so every consumer can rely on them."""
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise DataError(
                f"labels must be int64 [N], got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"{self.images.shape[0]} images but {self.labels.shape[0]} labels"
            )
        self.images = self.images.contiguous()
        self.labels = self.labels.contiguous()

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.labels.shape[0])


def prepare_hint(name: str, root: str | Path) -> str:
    """The command that (re)builds the cache of data set `name`, for error messages."""
    return f"run `hypersparse prepare --dataset {name}` (data root: {Path(root)})"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file, read in chunks (cache integrity)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """MD5 hex digest of a file (the checksum the data set publishers give)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def network_timeout(seconds: float = NETWORK_TIMEOUT_S) -> Iterator[None]:
    """Temporarily bound every blocking socket operation so a missing network fails fast."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _tmp_name(path: Path) -> Path:
    """A per-process temporary sibling of `path` (same folder, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _write_npz(path: Path, data: ImageData) -> dict[str, Any]:
    """Write one split atomically (tmp + fsync + os.replace); return its size and hash."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                images=np.ascontiguousarray(data.images.numpy()),
                labels=np.ascontiguousarray(data.labels.numpy()),
            )
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": path.name, "bytes": size, "sha256": digest, "n": len(data)}


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write JSON atomically."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_cache(
    prepared: Path,
    info: DatasetInfo,
    splits: dict[str, ImageData],
    params: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write train/test npz files, then meta.json last: meta.json marks a complete cache."""
    prepared.mkdir(parents=True, exist_ok=True)
    (prepared / "meta.json").unlink(missing_ok=True)
    files = {split: _write_npz(prepared / f"{split}.npz", splits[split]) for split in SPLITS}
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "name": info.name,
        "params": params,
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "image_size": info.image_size,
        "mean": list(info.mean),
        "std": list(info.std),
        "pad": info.pad,
        "hflip": info.hflip,
        "splits": files,
    }
    if extra:
        meta.update(extra)
    _write_json(prepared / "meta.json", meta)


def read_meta(prepared: Path, name: str, root: str | Path) -> dict[str, Any]:
    """Read and sanity-check meta.json of a cache; DataError if missing or unreadable."""
    path = prepared / "meta.json"
    if not path.is_file():
        raise DataError(
            f"data set '{name}' is not prepared: {path} is missing; {prepare_hint(name, root)}"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({e}); {prepare_hint(name, root)}") from e
    if not isinstance(meta, dict):
        raise DataError(f"{path} holds no JSON object; {prepare_hint(name, root)}")
    if meta.get("format") != CACHE_FORMAT or meta.get("name") != name:
        raise DataError(
            f"{path} belongs to another cache format/data set "
            f"(format {meta.get('format')!r}, name {meta.get('name')!r}); "
            f"{prepare_hint(name, root)}"
        )
    std = meta.get("std")
    if not (isinstance(std, list) and std and all(
            isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in std)):
        raise DataError(
            f"{path} has per-channel std {std!r}: every std must be a finite number > 0 "
            f"(normalisation divides by it); delete {prepared} and {prepare_hint(name, root)}"
        )
    return meta


def cache_is_valid(prepared: Path, name: str, params: dict[str, Any]) -> bool:
    """True when meta.json matches `params` and every split file has its recorded hash."""
    try:
        meta = read_meta(prepared, name, prepared)
    except DataError:
        return False
    if meta.get("params") != params:
        return False
    for split in SPLITS:
        rec = meta.get("splits", {}).get(split)
        path = prepared / f"{split}.npz"
        if not rec or not path.is_file() or path.stat().st_size != rec.get("bytes"):
            return False
        if sha256_file(path) != rec.get("sha256"):
            return False
    return True


def read_split(prepared: Path, name: str, root: str | Path, split: str) -> ImageData:
    """Load one split of a cache, checking size, keys, dtypes, shapes and label range."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (choose one of {', '.join(SPLITS)})")
    meta = read_meta(prepared, name, root)
    rec = meta.get("splits", {}).get(split, {})
    path = prepared / f"{split}.npz"
    hint = prepare_hint(name, root)
    if not path.is_file():
        raise DataError(f"{path} is missing (partial cache); {hint}")
    if path.stat().st_size != rec.get("bytes"):
        raise DataError(
            f"{path} has {path.stat().st_size} bytes, meta.json says {rec.get('bytes')} "
            f"(partial or corrupt cache); delete {prepared} and {hint}"
        )
    if sha256_file(path) != rec.get("sha256"):
        raise DataError(
            f"{path} does not match its SHA-256 in meta.json (changed or corrupt cache); "
            f"delete {prepared} and {hint}"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            labels = z["labels"]
    except Exception as e:  # zip/npy format errors come in many types
        raise DataError(f"{path} is corrupt ({e}); delete {prepared} and {hint}") from e
    c, s = int(meta["in_channels"]), int(meta["image_size"])
    n = int(rec.get("n", -1))
    ok = (
        images.dtype == np.uint8
        and images.shape == (n, c, s, s)
        and labels.dtype == np.int64
        and labels.shape == (n,)
        and (n == 0 or (int(labels.min()) >= 0 and int(labels.max()) < int(meta["num_classes"])))
    )
    if not ok:
        raise DataError(
            f"{path} does not match meta.json (got images {images.dtype} {images.shape}, "
            f"labels {labels.dtype} {labels.shape}, expected {n} x {c}x{s}x{s}); "
            f"delete {prepared} and {hint}"
        )
    return ImageData(torch.from_numpy(images), torch.from_numpy(labels))
