"""The data sets by name and their fixed facts that need no data: which exist, their image
sizes, which can be resized. Torch-free, so config checks, the CLI and the workflow read it
without loading the data pipeline."""

from __future__ import annotations

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "tinyimagenet")
NATIVE_SIZE: dict[str, int] = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64}
RESIZABLE: frozenset[str] = frozenset({"digits"})  # config `image_size` applies to these
NUM_CLASSES: dict[str, int] = {"digits": 10, "cifar10": 10, "cifar100": 100, "tinyimagenet": 200}
TRAIN_IMAGES: dict[str, int] = {"digits": 1_437, "cifar10": 50_000, "cifar100": 50_000,
                                "tinyimagenet": 100_000}  # digits: its default split


def base_name(name: str) -> str:
    """The data set a name stands for (a pilot subset such as cifar10-c5-n100 -> cifar10)."""
    return name.split("-", 1)[0]


def is_resizable(name: str) -> bool:
    """Whether ``image_size`` applies to data set ``name`` (and so names its cache)."""
    return base_name(name) in RESIZABLE
