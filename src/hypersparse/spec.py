"""The typed run spec: every number a run depends on, and nothing else (no globals).

A run folder is a pure function of its spec; ``RunSpec.to_dict()`` is saved as spec.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# torch.compile modes a run may train with: an execution option (config `compile`, CLI
# --compile), recorded in metrics.json but not part of the spec
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class OptimSpec:
    """SGD settings shared by every phase (authors' defaults)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4  # applied to all parameters, as in the authors' code
    batch_size: int = 64
    eval_batch_size: int = 1024


@dataclass(frozen=True)
class ScheduleSpec:
    """A multi-step learning-rate schedule: ``epochs`` long, lr x ``gamma`` at each milestone."""

    epochs: int = 160
    milestones: tuple[int, ...] = (80, 120)
    gamma: float = 0.1


@dataclass(frozen=True)
class RunSpec:
    """One training run: data, model, method (with its parameters), target sparsity, seed."""

    dataset: str
    model: str
    method: str = "dense"  # the run label (config key), e.g. art_hs
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
        if not 0.0 <= self.kappa < 1.0:
            raise ValueError(f"kappa must be in [0, 1), got {self.kappa}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown run-spec keys: {', '.join(unknown)}")
        d = dict(d)
        if "optim" in d:
            d["optim"] = _build(OptimSpec, d["optim"], "optim")
        for key in ("dense", "finetune"):
            if key in d:
                d[key] = _build(ScheduleSpec, d[key], key)
        if "snapshot_epochs" in d:
            d["snapshot_epochs"] = tuple(int(e) for e in d["snapshot_epochs"])
        return cls(**d)


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown keys in {where}: {', '.join(unknown)}")
    d = dict(d)
    if "milestones" in d:
        d["milestones"] = tuple(int(m) for m in d["milestones"])
    return cls(**d)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def kappa_tag(kappa: float) -> str:
    """Folder tag of a pruning rate: k0.9, k0.995, dense k0."""
    return "k0" if kappa == 0 else f"k{kappa!r}"
