"""What a sparsification method is: a parameter dataclass plus a ``run`` that drives the engine.

A method registers itself with :func:`register`; the config names it (``family``), the
workflow finds its dense inputs through :meth:`Method.dense_inputs`, and every table and
figure picks its runs up from the run folders. See the README ("Adding a method").
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..engine import MaskHooks, Phase, Trainer
from ..errors import UserError
from ..io import load_state_dict_checked, model_state, safe_torch_load
from ..masks import Masks
from ..spec import RunSpec

METHODS: dict[str, type[Method]] = {}


class ParamError(UserError, ValueError):
    """A method parameter that is unknown or of the wrong type/range."""


@dataclasses.dataclass(frozen=True)
class NoParams:
    """For methods without hyper-parameters of their own."""


class Method:
    """Base class of every method; subclasses set ``family`` and implement :meth:`run`."""

    family: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    exact_sparsity: ClassVar[bool] = True  # ends with exactly floor(kappa*N) zeros
    needs_kappa: ClassVar[bool] = True  # runs once per kappa (False: dense, xrda)
    # Optimizer/batch settings this method's reference code uses instead of the grid's
    # `optim` (e.g. xRDA's batch size 128); config `methods.<label>.optim` overrides both.
    optim_defaults: ClassVar[dict[str, Any]] = {}
    # Files a run writes into its folder besides every run's own (metrics.json, model.pt,
    # history.csv, spec.json, mask.safetensors): checked by the workflow, kept with the run.
    extra_outputs: ClassVar[tuple[str, ...]] = ()
    # Figures (analysis.figures.FIGURES names) drawn from this family's runs, besides those
    # every grid gets; the workflow adds them where the config has such a method.
    figures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: RunSpec, params: Any) -> None:
        self.spec = spec
        self.p = params

    @classmethod
    def dense_inputs(cls, params: Any) -> list[str]:
        """Files of the dense run (same data set, model, seed) this method starts from."""
        return []

    @classmethod
    def figure_order(cls, params: Any) -> int:
        """Where runs with these parameters come among their family's in its figures (lower
        first; the first is the one a single-run figure shows)."""
        return 0

    @classmethod
    def snapshot_epochs(cls, params: Any) -> list[int]:
        """Epochs at which the dense run must save ``snapshot_e{E}.pt`` for this method."""
        return []

    @classmethod
    def config_problems(cls, params: Any, dense: dict[str, Any], finetune: dict[str, Any]
                        ) -> list[str]:
        """Settings that pass the parameter checks but cannot work with the grid's schedules
        (each a message with the fix); checked before any job starts."""
        epochs = int(dense["epochs"])
        return [
            f"needs the dense run's snapshot after epoch {e}, but dense.epochs is {epochs}: "
            f"use an epoch within the dense schedule or raise dense.epochs"
            for e in cls.snapshot_epochs(params) if not 0 <= e <= epochs
        ]

    @classmethod
    def dense_epochs_used(cls, params: Any, dense_epochs: int) -> int:
        """Epochs of the dense run this method's result builds on (counted into its training
        FLOPs): all of them for methods that prune the trained dense model."""
        return dense_epochs if cls.dense_inputs(params) else 0

    @classmethod
    def estimated_epochs(cls, params: Any, dense: dict[str, Any], finetune: dict[str, Any],
                         kappa: float, art_epochs: int) -> int:
        """Training epochs one run of this method takes (for `hypersparse estimate`); the
        default is one fine-tuning schedule. ``art_epochs`` is the assumption for ART."""
        return int(finetune["epochs"])

    def run(self, trainer: Trainer, dense_dir: Path | None) -> dict[str, Any]:
        """Train; leave the final model in ``trainer.model``; return extra metrics."""
        raise NotImplementedError

    def write_failure_outputs(self, run_dir: Path) -> None:
        """After a diverged run: write this method's extra output files if they are missing."""

    # helpers shared by methods -------------------------------------------------
    def finetune_phase(self, name: str = "finetune") -> Phase:
        """The standard schedule of a sparse model (config ``finetune``: 160, [80, 120])."""
        f = self.spec.finetune
        return Phase(name, f.epochs, self.spec.optim.lr, f.milestones, f.gamma)

    def train_with_mask(
        self, trainer: Trainer, masks_fn: Any, name: str = "finetune", phase: Phase | None = None
    ) -> dict[str, Any]:
        """Fine-tune / train with a fixed mask computed by ``masks_fn(trainer) -> Masks``."""
        hooks = MaskHooks()

        def start(t: Trainer) -> None:
            hooks.masks = masks_fn(t)

        return trainer.fit(phase or self.finetune_phase(name), hooks, on_start=start)


# Dense files the runner has read and checked before any work, handed to the method once
# (a second use reads the file again, so no caller ever sees another's in-place changes).
_CHECKED_DENSE: dict[Path, Any] = {}


@contextlib.contextmanager
def checked_dense_files() -> Iterator[None]:
    """The scope of one run: dense files handed over in it are dropped when it ends (e.g. a
    resumed run that never loads them)."""
    try:
        yield
    finally:
        _CHECKED_DENSE.clear()


def hand_over_dense_file(path: Path, obj: Any) -> None:
    """Keep a checked dense checkpoint for the one :func:`load_dense_weights` of this run."""
    _CHECKED_DENSE[Path(path).resolve()] = obj


def load_dense_weights(trainer: Trainer, path: Path) -> dict[str, Any]:
    """Load a dense checkpoint (a state dict or a snapshot dict) into ``trainer.model``.

    Returns the whole loaded object so callers can take e.g. its optimizer state (on the CPU
    when the runner's check read it; ``load_state_dict`` moves it to the model's device).
    """
    obj = _CHECKED_DENSE.pop(Path(path).resolve(), None)
    if obj is None:
        obj = safe_torch_load(path, map_location=trainer.device)
    state = model_state(obj)
    load_state_dict_checked(trainer.model, state, str(path))
    return obj


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available to the config under ``cls.family``."""
    if not cls.family:
        raise ValueError(f"{cls.__name__} has no family name")
    old = METHODS.get(cls.family)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ParamError(
            f"{cls.__module__}.{cls.__qualname__} registers the method name {cls.family!r}, "
            f"which {old.__module__}.{old.__qualname__} already has; give it another family name"
        )
    METHODS[cls.family] = cls
    return cls


def get_method(family: str) -> type[Method]:
    """The registered method class of ``family``; the error lists the known ones."""
    try:
        return METHODS[family]
    except KeyError:
        raise ParamError(
            f"unknown method {family!r}; known methods: {', '.join(sorted(METHODS))}"
        ) from None


def build_params(family: str, values: dict[str, Any], where: str = "") -> Any:
    """Validate ``values`` against the method's Params dataclass (names, types) and build it."""
    cls = get_method(family).Params
    where = where or f"methods.{family}"
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParamError(
            f"{where}: unknown parameter(s) {', '.join(unknown)} for method {family!r}; "
            f"allowed: {', '.join(fields) or '(none)'}"
        )
    clean = {}
    for name, value in values.items():
        clean[name] = _coerce(value, hints[name], f"{where}.{name}")
    try:
        params = cls(**clean)
    except (TypeError, ValueError) as exc:
        raise ParamError(f"{where}: {exc}") from exc
    check = getattr(params, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ParamError(f"{where}: {exc}") from exc
    return params


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if isinstance(value, str) and hint is not str and typing.get_origin(hint) is not typing.Literal:
        from ..config import read_scalar  # (PyYAML only where a string needs reading)

        value = read_scalar(value)  # `snakemake --config methods={...}` gives strings
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is typing.Literal:
        if value not in args:
            raise ParamError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ParamError(f"{where} must be a string, got {value!r}")
        return value
    return value


def params_to_dict(params: Any) -> dict[str, Any]:
    """JSON-able dict of a Params instance."""
    d = dataclasses.asdict(params)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


__all__ = [
    "METHODS",
    "Masks",
    "Method",
    "NoParams",
    "ParamError",
    "build_params",
    "get_method",
    "load_dense_weights",
    "params_to_dict",
    "register",
]
