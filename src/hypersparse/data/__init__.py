"""Data sets by name -> uint8 tensors + labels + normalisation, and on-device batching.

Prepare once (`prepare_dataset`), then `load_split` and wrap a split in a `BatchLoader`.
"""

from .common import DataError, DatasetInfo, ImageData
from .loader import BatchLoader, augment_batch, epoch_seed, normalize
from .registry import DATASETS, dataset_info, load_split, prepare_dataset, prepared_dir

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DataError",
    "DatasetInfo",
    "ImageData",
    "augment_batch",
    "dataset_info",
    "epoch_seed",
    "load_split",
    "normalize",
    "prepare_dataset",
    "prepared_dir",
]
