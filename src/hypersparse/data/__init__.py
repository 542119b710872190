"""Data sets by name -> uint8 tensors + labels + normalisation, and on-device batching.

Prepare once (`prepare_dataset`), then `load_split` and wrap a split in a `BatchLoader`.
Names are imported on first use, so :mod:`hypersparse.data.names` stays torch-free.
"""

import importlib
from typing import Any

from .names import DATASETS

_LAZY = {
    "DataError": "common",
    "DatasetInfo": "common",
    "ImageData": "common",
    "BatchLoader": "loader",
    "augment_batch": "loader",
    "epoch_seed": "loader",
    "normalize": "loader",
    "dataset_info": "registry",
    "load_split": "registry",
    "prepare_dataset": "registry",
    "prepared_dir": "registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DATASETS", *_LAZY]
