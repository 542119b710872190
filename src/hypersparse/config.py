"""Workflow configuration: schema validation with defaults, semantic checks, run specs.

Used by the Snakefile at parse time (so a bad config stops the run before any job starts)
and by ``hypersparse validate-config``. Errors name the offending key and the fix.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from .data.names import is_resizable
from .errors import UserError

SCHEMA_ENV = "HYPERSPARSE_CONFIG_SCHEMA"
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


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (the last would win)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at line "
                f"{seen[key].start_mark.line + 1}) of {key_node.start_mark.name}: the last one "
                "would silently win; keep one"
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a dict; syntax errors and duplicate keys are ConfigErrors."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def _non_finite(obj: Any, path: str = "") -> list[str]:
    """Keys whose value is a NaN or infinite number (JSON schema bounds let NaN through)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path or "(top level)"]
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in _non_finite(v, f"{path}.{key}" if path
                                                                   else str(key))]
    if isinstance(obj, list):
        return [k for i, v in enumerate(obj) for k in _non_finite(v, f"{path}[{i}]")]
    return []


def _schema_types(schema: dict[str, Any], root: dict[str, Any]) -> set[str]:
    """The JSON types a (sub)schema admits (type / enum / oneOf), for re-typing strings."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    types = schema.get("type", [])
    out = {types} if isinstance(types, str) else set(types)
    for sub in schema.get("oneOf", []) + schema.get("anyOf", []):
        out |= _schema_types(sub, root)
    for v in schema.get("enum", []):
        out.add("string" if isinstance(v, str) else "number")
    return out


def read_scalar(text: str) -> Any:
    """A command-line string as a number ('5e-6' -> 5e-06, '3' -> 3) or a YAML scalar
    ('true' -> True, 'null' -> None); anything else stays the string."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _retype(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """Snakemake's ``--config key=[0.9,0.98]`` gives strings ('0.9'): read a string as YAML
    where the schema wants no string there, recursively through arrays and objects."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if isinstance(value, str):
        types = _schema_types(schema, root)
        return read_scalar(value) if types and "string" not in types else value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_retype(v, schema["items"], root) for v in value]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: _retype(v, props.get(k, extra if isinstance(extra, dict) else {}), root)
                for k, v in value.items()}
    return value


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate against the schema, fill defaults, run semantic checks; returns a new dict.

    Raises ConfigError listing every problem as ``key: problem``.
    """
    import jsonschema

    schema = load_schema()
    cfg = _retype(copy.deepcopy(config or {}), schema, schema)
    # `snakemake --config compile=true` passes the string; YAML files give booleans
    switch = {"true": True, "on": True, "false": False, "off": False}
    if isinstance(cfg.get("compile"), str) and cfg["compile"].lower() in switch:
        cfg["compile"] = switch[cfg["compile"].lower()]
    bad = _non_finite(cfg)
    if bad:
        raise ConfigError(_listing(
            [f"config key {k}: NaN or infinite number; give a finite value" for k in bad]))
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
        raise ConfigError(_listing(problems))
    return cfg


def _listing(problems: list[str]) -> str:
    """One line for one problem, else one line per problem under a heading."""
    if len(problems) == 1:
        return f"invalid configuration: {problems[0]}"
    return "invalid configuration:\n  " + "\n  ".join(problems)


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
    except UserError as exc:
        problems.append(f"config key plugins: {exc}")
        return problems
    for label, entry in cfg["methods"].items():
        if not re.fullmatch(r"[a-z0-9_]+", label):
            problems.append(f"config key methods.{label}: labels use a-z, 0-9 and _ only")
        family, params = method_entry(label, entry)
        try:
            built = build_params(family, params, f"methods.{label}")
        except ParamError as exc:
            msg = str(exc)
            if not msg.startswith(f"methods.{label}"):
                msg = f"methods.{label}: {msg}"
            problems.append(f"config key {msg}")
            continue
        from .methods import get_method

        problems += [f"config key methods.{label}: {p}" for p in get_method(family).config_problems(
            built, cfg["dense"], cfg["finetune"])]
    if problems:
        return problems
    from .spec import RunSpec, ScheduleSpec

    for key in ("dense", "finetune"):  # schedules whose every milestone takes effect
        sched = cfg[key]
        try:
            ScheduleSpec(sched["epochs"], tuple(sched["milestones"]), sched["gamma"]).check(key)
        except ValueError as exc:
            problems.append(f"config key {exc}")
    if problems:
        return problems
    # every run spec of the grid builds (each method's optimizer settings, ...)
    for label in ["dense", *cfg["methods"]]:
        kappas = [0.0] if label == "dense" else method_kappas(cfg, label)
        try:
            RunSpec.from_dict(run_spec(cfg, cfg["datasets"][0], cfg["models"][0], label,
                                       kappas[0], cfg["seeds"][0]))
        except ValueError as exc:
            problems.append(f"config key {'' if label == 'dense' else f'methods.{label} / '}"
                            f"{exc}")
    from .data import DataError
    from .data.registry import _check_name

    for name in grid_datasets(cfg):
        try:
            _check_name(name)
        except DataError as exc:
            problems.append(f"config key subset: {exc}")
    grid = {float(k) for label in cfg["methods"] for k in method_kappas(cfg, label)}
    for key in ("kappa", "hs_kappa"):
        value = cfg["figures"].get(key)
        if value is not None and float(value) not in grid:
            problems.append(
                f"config key figures.{key}: {value} is not a kappa of the grid "
                f"({', '.join(str(k) for k in sorted(grid))}); pick one of them or null"
            )
    return list(dict.fromkeys(problems))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config (strictly: no duplicate keys), apply top-level overrides, validate."""
    cfg = read_yaml(path)
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


def grid_datasets(cfg: dict[str, Any]) -> list[str]:
    """The data set names the grid runs on: the config's, or their pilot subsets (``subset``:
    e.g. cifar10-c5-n100), which name run folders and tables of their own."""
    from .data.subset import variant_name

    sub = cfg.get("subset") or {}
    return [variant_name(d, sub.get("classes"), sub.get("per_class"), sub.get("image_size"))
            for d in cfg["datasets"]]


def gpu_ids(cfg: dict[str, Any]) -> list[str]:
    """Physical ids of the GPUs training jobs are spread over on this machine: none for
    ``device: cpu``; ``gpus: auto`` counts the visible CUDA devices; an explicit count takes
    the first ones of $CUDA_VISIBLE_DEVICES (else 0, 1, ...)."""
    if cfg["device"] == "cpu":
        return []
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    n = cfg["gpus"]
    if n == "auto":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ids = visible if visible else [str(i) for i in range(n)]
    if len(ids) < n:
        ids += [str(i) for i in range(len(ids), n)]
    return ids[:n]


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


def method_of(cfg: dict[str, Any], label: str) -> tuple[Any, Any]:
    """(registered method class, its built parameters) of the config's method ``label``."""
    from .methods import build_params, get_method

    family, params = method_entry(label, cfg["methods"][label])
    return get_method(family), build_params(family, params)


def snapshot_epochs(cfg: dict[str, Any]) -> list[int]:
    """Epochs at which dense runs must save snapshots, the union over all methods."""
    epochs: set[int] = set()
    for label in cfg["methods"]:
        cls, params = method_of(cfg, label)
        epochs.update(cls.snapshot_epochs(params))
    return sorted(epochs)


def dense_inputs(cfg: dict[str, Any], label: str) -> list[str]:
    """Files of the dense run that method ``label`` starts from."""
    cls, params = method_of(cfg, label)
    return cls.dense_inputs(params)


def extra_outputs(cfg: dict[str, Any], label: str) -> list[str]:
    """Files method ``label`` writes into a run folder besides every run's own."""
    return [] if label == "dense" else list(method_of(cfg, label)[0].extra_outputs)


def method_figures(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """Figure name -> the run labels it shows, for the figures the config's methods declare
    (e.g. ART's trace figures, labels in the family's figure order)."""
    out: dict[str, list[tuple[int, int, str]]] = {}
    for i, label in enumerate(cfg["methods"]):
        cls, params = method_of(cfg, label)
        for fig in cls.figures:
            out.setdefault(fig, []).append((cls.figure_order(params), i, label))
    return {fig: [label for _, _, label in sorted(v)] for fig, v in out.items()}


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
    if not is_resizable(dataset):
        spec["image_size"] = None
    return spec


def run_dir(cfg: dict[str, Any], dataset: str, model: str, method: str, kappa: Any, seed: Any) -> str:
    """The run folder: <results_dir>/runs/ + spec.RUN_PATTERN."""
    from .spec import run_relpath

    return f"{cfg['results_dir']}/runs/{run_relpath(dataset, model, method, float(kappa), seed)}"
