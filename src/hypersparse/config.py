"""Workflow configuration: schema validation with defaults, semantic checks, run specs.

Used by the Snakefile at parse time (so a bad config stops the run before any job starts)
and by ``hypersparse validate-config``. Errors name the offending key and the fix.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

SCHEMA_ENV = "HYPERSPARSE_CONFIG_SCHEMA"
DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet")
RUN_GLOBAL_KEYS = ("width", "image_size", "data_root", "device", "precision")


class ConfigError(UserError, ValueError):
    """An invalid workflow configuration; the message names the key."""


def schema_path() -> Path:
    """workflow/schemas/config.schema.yaml of this checkout (or $HYPERSPARSE_CONFIG_SCHEMA)."""
    env = os.environ.get(SCHEMA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def load_schema() -> dict[str, Any]:
    """The config JSON schema (YAML file)."""
    with open(schema_path(), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _key(path: Any) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _fill_defaults(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> None:
    """Fill ``default`` values of object properties recursively (in place)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return
    for name, sub in schema.get("properties", {}).items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if name in instance:
            _fill_defaults(instance[name], sub, root)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate against the schema, fill defaults, run semantic checks; returns a new dict.

    Raises ConfigError listing every problem as ``key: problem``.
    """
    import jsonschema

    schema = load_schema()
    cfg = copy.deepcopy(config or {})
    # `snakemake --config compile=true` passes the string; YAML files give booleans
    switch = {"true": True, "on": True, "false": False, "off": False}
    if isinstance(cfg.get("compile"), str) and cfg["compile"].lower() in switch:
        cfg["compile"] = switch[cfg["compile"].lower()]
    _fill_defaults(cfg, schema, schema)
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        where = _key(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            problems.append(f"{where}: unknown key(s) {', '.join(extra)} (allowed: {allowed})")
            continue
        hint = err.schema.get("description", "")
        problems.append(f"config key {where}: {err.message}" + (f" ({hint})" if hint else ""))
    if not problems:
        problems += _semantic_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg


def _semantic_problems(cfg: dict[str, Any]) -> list[str]:
    from .methods import ParamError, build_params, load_plugins
    from .models import parse_model_name

    problems = []
    for i, name in enumerate(cfg["models"]):
        try:
            parse_model_name(name)
        except ValueError as exc:
            problems.append(f"config key models[{i}]: {exc}")
    try:
        load_plugins(cfg.get("plugins", []))
    except ImportError as exc:
        problems.append(f"config key plugins: cannot import {exc.name!r} ({exc})")
        return problems
    for label, entry in cfg["methods"].items():
        if not re.fullmatch(r"[a-z0-9_]+", label):
            problems.append(f"config key methods.{label}: labels use a-z, 0-9 and _ only")
        family, params = method_entry(label, entry)
        try:
            build_params(family, params, f"methods.{label}")
        except ParamError as exc:
            msg = str(exc)
            if not msg.startswith(f"methods.{label}"):
                msg = f"methods.{label}: {msg}"
            problems.append(f"config key {msg}")
    return problems


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply top-level overrides, validate."""
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    cfg.update(overrides or {})
    return validate_config(cfg)


def method_entry(label: str, entry: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(family, params) of a ``methods`` entry: ``family`` defaults to the label.

    ``family``, ``kappas`` and ``optim`` are workflow keys, everything else is a method
    parameter.
    """
    entry = dict(entry or {})
    family = entry.pop("family", label)
    entry.pop("kappas", None)
    entry.pop("optim", None)
    return family, entry


def method_optim(cfg: dict[str, Any], label: str) -> dict[str, Any]:
    """The optimizer settings of a method's runs: the grid's ``optim``, then what the method's
    reference code uses (``Method.optim_defaults``), then ``methods.<label>.optim``."""
    from .methods import get_method

    if label == "dense":
        return dict(cfg["optim"])
    entry = cfg["methods"][label] or {}
    family = method_entry(label, entry)[0]
    return {**cfg["optim"], **get_method(family).optim_defaults, **(entry.get("optim") or {})}


def method_kappas(cfg: dict[str, Any], label: str) -> list[float]:
    """The kappas a method runs at: its own ``kappas`` entry, else the grid's."""
    return list((cfg["methods"][label] or {}).get("kappas") or cfg["kappas"])


def sparse_methods(cfg: dict[str, Any]) -> list[str]:
    """Labels of the methods that run once per kappa."""
    from .methods import get_method

    return [
        label
        for label, e in cfg["methods"].items()
        if get_method(method_entry(label, e)[0]).needs_kappa
    ]


def kappa_free_methods(cfg: dict[str, Any]) -> list[str]:
    """Labels of non-dense methods that run once (kappa 0), e.g. xrda's emergent sparsity."""
    from .methods import get_method

    out = []
    for label, e in cfg["methods"].items():
        family = method_entry(label, e)[0]
        if family != "dense" and not get_method(family).needs_kappa:
            out.append(label)
    return out


def snapshot_epochs(cfg: dict[str, Any]) -> list[int]:
    """Epochs at which dense runs must save snapshots, the union over all methods."""
    from .methods import build_params, get_method

    epochs: set[int] = set()
    for label, e in cfg["methods"].items():
        family, params = method_entry(label, e)
        epochs.update(get_method(family).snapshot_epochs(build_params(family, params)))
    return sorted(epochs)


def dense_inputs(cfg: dict[str, Any], label: str) -> list[str]:
    """Files of the dense run that method ``label`` starts from."""
    from .methods import build_params, get_method

    family, params = method_entry(label, cfg["methods"][label])
    return get_method(family).dense_inputs(build_params(family, params))


def run_spec(
    cfg: dict[str, Any], dataset: str, model: str, method: str, kappa: float, seed: int
) -> dict[str, Any]:
    """The resolved run spec (a RunSpec dict) of one grid cell."""
    if method == "dense":
        family, params = "dense", {}
    else:
        family, params = method_entry(method, cfg["methods"][method])
    spec = {
        "dataset": dataset,
        "model": model,
        "method": method,
        "family": family,
        "kappa": float(kappa),
        "seed": int(seed),
        "optim": method_optim(cfg, method),
        "dense": dict(cfg["dense"]),
        "finetune": dict(cfg["finetune"]),
        "params": params,
        "snapshot_epochs": snapshot_epochs(cfg) if method == "dense" else [],
    }
    for key in RUN_GLOBAL_KEYS:
        spec[key] = cfg[key]
    if dataset != "digits":
        spec["image_size"] = None
    return spec


def run_dir(cfg: dict[str, Any], dataset: str, model: str, method: str, kappa: Any, seed: Any) -> str:
    """results/runs/{dataset}/{model}/{method}/k{kappa}/seed{seed}."""
    from .spec import kappa_tag

    return f"{cfg['results_dir']}/runs/{dataset}/{model}/{method}/{kappa_tag(float(kappa))}/seed{seed}"
