"""The typed run spec: every number a run depends on, and nothing else (no globals).

A run folder is a pure function of its spec; ``RunSpec.to_dict()`` is saved as spec.json.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# torch.compile modes a run may train with: an execution option (config `compile`, CLI
# --compile), recorded in metrics.json but not part of the spec
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def _number(where: str, value: Any, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> None:
    """A finite real number within the bounds, else ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if low is not None and high is not None:
        if (value <= low if low_open else value < low) or (value >= high if high_open else
                                                           value > high):
            span = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise ValueError(f"{where} must be in {span}, got {value!r}")
        return
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{where} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{where} must be {'<' if high_open else '<='} {high}, got {value!r}")


def _integer(where: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class OptimSpec:
    """SGD settings shared by every phase (authors' defaults)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4  # applied to all parameters, as in the authors' code
    batch_size: int = 64
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        _number("optim.lr", self.lr, low=0, low_open=True)
        _number("optim.momentum", self.momentum, low=0, high=1, high_open=True)
        _number("optim.weight_decay", self.weight_decay, low=0)
        _integer("optim.batch_size", self.batch_size, 1)
        _integer("optim.eval_batch_size", self.eval_batch_size, 1)


@dataclass(frozen=True)
class ScheduleSpec:
    """A multi-step learning-rate schedule: ``epochs`` long, lr x ``gamma`` at each milestone."""

    epochs: int = 160
    milestones: tuple[int, ...] = (80, 120)
    gamma: float = 0.1

    def check(self, where: str) -> None:
        """ValueError naming ``where`` unless epochs >= 1 and every milestone takes effect."""
        _integer(f"{where}.epochs", self.epochs, 1)
        for m in self.milestones:
            _integer(f"{where}.milestones", m, 1)
            if m >= self.epochs:
                raise ValueError(
                    f"{where}.milestones {list(self.milestones)}: {m} is not below "
                    f"{where}.epochs = {self.epochs}, so that lr step never happens; use "
                    f"milestones below {self.epochs}"
                )
        _number(f"{where}.gamma", self.gamma, low=0, high=1, low_open=True)


_LABEL_KEY = "method"  # RunSpec.label in spec.json, specs passed to jobs, and tables


@dataclass(frozen=True)
class RunSpec:
    """One training run: data, model, method (with its parameters), target sparsity, seed.

    ``label`` names the run (the config's key under ``methods``, e.g. art_hs; its folder and
    table row), ``family`` the registered method that implements it (e.g. art). In spec.json
    the label is stored under the key ``method``, as in every table.
    """

    dataset: str
    model: str
    label: str = "dense"  # the run label (config key), e.g. art_hs
    family: str = "dense"  # the registered method implementing it, e.g. art
    kappa: float = 0.0  # target pruning rate: fraction of prunable weights that are zero
    seed: int = 0
    width: float = 1.0
    image_size: int | None = None  # only for data sets with a configurable size (digits)
    data_root: str = "results/data"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (CUDA autocast)
    optim: OptimSpec = field(default_factory=OptimSpec)
    dense: ScheduleSpec = field(default_factory=ScheduleSpec)
    finetune: ScheduleSpec = field(default_factory=ScheduleSpec)
    snapshot_epochs: tuple[int, ...] = ()  # dense runs save snapshot_e{E}.pt after E epochs
    params: dict[str, Any] = field(default_factory=dict)  # the method's own hyper-parameters

    def __post_init__(self) -> None:
        for name in ("dataset", "model", "label", "family", "data_root", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                shown = _LABEL_KEY if name == "label" else name  # as spec.json spells it
                raise ValueError(f"{shown} must be a non-empty string, got {getattr(self, name)!r}")
        _number("kappa", self.kappa, low=0, high=1, high_open=True)
        _integer("seed", self.seed, 0)
        _number("width", self.width, low=0, low_open=True)
        if self.image_size is not None:
            _integer("image_size", self.image_size, 1)
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if not isinstance(self.params, dict):
            raise ValueError(f"params must be a mapping, got {self.params!r}")
        self.dense.check("dense")
        self.finetune.check("finetune")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists; the label under the key ``method``)."""
        d = _jsonable(dataclasses.asdict(self))
        return {(_LABEL_KEY if k == "label" else k): v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        names = {f.name for f in dataclasses.fields(cls)} - {"label"} | {_LABEL_KEY}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown run-spec keys: {', '.join(unknown)}")
        d = {("label" if k == _LABEL_KEY else k): v for k, v in d.items()}
        if "optim" in d:
            d["optim"] = _build(OptimSpec, d["optim"], "optim")
        for key in ("dense", "finetune"):
            if key in d:
                d[key] = _build(ScheduleSpec, d[key], key)
        if "snapshot_epochs" in d:
            d["snapshot_epochs"] = _int_tuple(d["snapshot_epochs"], "snapshot_epochs")
        return cls(**d)


def _int_tuple(values: Any, where: str) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where} must be a list of integers, got {values!r}")
    return tuple(values)


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a mapping, got {d!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown keys in {where}: {', '.join(unknown)}")
    d = dict(d)
    if "milestones" in d:
        d["milestones"] = _int_tuple(d["milestones"], f"{where}.milestones")
    return cls(**d)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


RUN_PATTERN = "{dataset}/{model}/{method}/k{kappa}/seed{seed}"
"""Where a run lives under ``<results_dir>/runs`` (dense runs: method ``dense``, kappa 0).
The one spelling of the layout: paths are formatted from it, the workflow uses it as the
wildcard pattern of its training rules (run folders, logs, benchmark files) and analysis
parses folder names with it."""
RUN_DEPTH = RUN_PATTERN.count("/") + 1  # folder levels of a run below the runs folder

_FIELD_RE = {"dataset": r"[^/]+", "model": r"[^/]+", "method": r"[^/]+",
             "kappa": r"\d+(?:\.\d+)?(?:e-?\d+)?", "seed": r"\d+"}
RUN_GLOB = re.sub(r"\{\w+\}", "*", RUN_PATTERN)  # every run folder, for Path.glob


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """RUN_PATTERN as a regular expression with one named group per field."""
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", pattern):
        out += [re.escape(pattern[pos:m.start()]), f"(?P<{m[1]}>{_FIELD_RE[m[1]]})"]
        pos = m.end()
    return re.compile("^" + "".join(out) + re.escape(pattern[pos:]) + "$")


_RUN_RE = _pattern_regex(RUN_PATTERN)


def kappa_text(kappa: float) -> str:
    """A pruning rate as written in folder names: 0.9, 0.995; dense 0."""
    return "0" if float(kappa) == 0 else repr(float(kappa))


def run_relpath(dataset: str, model: str, method: str, kappa: float, seed: int) -> str:
    """The run folder of a spec's identity, relative to the runs folder (RUN_PATTERN)."""
    return RUN_PATTERN.format(dataset=dataset, model=model, method=method,
                              kappa=kappa_text(kappa), seed=int(seed))


def parse_run_relpath(parts: Sequence[str]) -> dict[str, Any] | None:
    """dataset/model/method/kappa/seed of a run folder's last RUN_DEPTH path parts (None if
    they do not follow RUN_PATTERN)."""
    m = _RUN_RE.match("/".join(parts[-RUN_DEPTH:])) if len(parts) >= RUN_DEPTH else None
    if m is None:
        return None
    d: dict[str, Any] = m.groupdict()
    d["kappa"], d["seed"] = float(d["kappa"]), int(d["seed"])
    return d


def spec_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Top-level spec keys in which two run specs differ (params.<name> for method params)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k == "params" and isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            pa, pb = a[k], b[k]
            out += [f"params.{n}" for n in sorted(set(pa) | set(pb)) if pa.get(n) != pb.get(n)]
        elif a.get(k) != b.get(k):
            out.append(k)
    return out
