"""Sparsification methods, one small module each, registered by family name.

Importing this package registers the built-in methods; config ``plugins`` can name extra
modules that register more (see README, "Adding a method").
"""

from __future__ import annotations

import importlib

from .base import (
    METHODS,
    Method,
    NoParams,
    ParamError,
    build_params,
    get_method,
    load_dense_weights,
    params_to_dict,
    register,
)

BUILTIN_MODULES = (
    "dense",
    "omp",
    "art",
    "pai",
    "lth",
    "gmp",
    "rigl",
    "acdc",
    "xrda",
)

for _name in BUILTIN_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # a module still being written is simply absent
        if _exc.name != f"{__name__}.{_name}":
            raise


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import user modules that register extra methods (config key ``plugins``)."""
    for mod in modules:
        importlib.import_module(mod)


__all__ = [
    "METHODS",
    "Method",
    "NoParams",
    "ParamError",
    "build_params",
    "get_method",
    "load_dense_weights",
    "load_plugins",
    "params_to_dict",
    "register",
]
