"""Sparsification methods, one small module each, registered by family name.

Importing this package registers the built-in methods; config ``plugins`` can name extra
modules that register more (see README, "Adding a method").
"""

from __future__ import annotations

import importlib

# importing the built-in method modules registers them
from . import acdc, art, dense, gmp, lth, omp, pai, rigl, xrda  # noqa: F401
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
from .pai import PruneAtInit


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import user modules that register extra methods (config key ``plugins``).

    A module that is not found raises ImportError; one that fails while importing raises a
    ParamError naming the module and its error.
    """
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and (mod == exc.name or mod.startswith(exc.name + ".")):
                raise
            raise ParamError(f"plugin module {mod!r} failed to import: {exc}") from None
        except ParamError:
            raise
        except Exception as exc:  # a plugin's own bug, reported as one line
            raise ParamError(
                f"plugin module {mod!r} raised {type(exc).__name__} on import: {exc}; fix the "
                "module or remove it from plugins"
            ) from None


__all__ = [
    "METHODS",
    "Method",
    "NoParams",
    "ParamError",
    "PruneAtInit",
    "build_params",
    "get_method",
    "load_dense_weights",
    "load_plugins",
    "params_to_dict",
    "register",
]
