"""Atomic file writes, CSV cells, safe checkpoint loading and provenance (versions, git commit)."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is unreadable, corrupt or does not fit the model it is loaded into."""


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(tmp)
        except RuntimeError as exc:  # torch.save reports a failed write (disk full) this way
            raise OSError(errno.EIO, f"writing failed ({str(exc).splitlines()[0]})",
                          str(path)) from exc
        os.chmod(tmp, 0o644)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


TEMP_GLOB = ".*.tmp"  # the names atomic_write gives its temp files: .<name>.<random>.tmp


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temp files that a killed writer left in ``folder``; returns what was removed.

    Only safe while no other process writes into ``folder`` (one job per run folder).
    """
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(TEMP_GLOB):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Write text so that no reader ever sees half a file."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(Path(path), write)


def csv_cell(value: Any, nan: str = "nan") -> str:
    """One value as written in the project's CSV files: None -> empty, floats by repr (they
    read back bit-exact), NaN as ``nan`` (some files leave it empty)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return nan if math.isnan(value) else repr(float(value))
    return str(value)


def atomic_write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]],
                     nan: str = "nan") -> None:
    """A header and one line per row (missing keys empty), written atomically."""
    lines = [",".join(columns)]
    lines += [",".join(csv_cell(r.get(c), nan) for c in columns) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented, NaN refused)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save through a temp file + rename."""
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def safe_torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint without executing pickled code (weights_only=True).

    Raises CheckpointError for a missing, truncated, corrupt or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        _check_zip_crc(path)
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/unsafe files
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); it is corrupt, "
            "truncated or contains pickled code. Delete it and rerun."
        ) from exc


def _check_zip_crc(path: Path) -> None:
    """torch.load does not verify the CRCs of its zip records: a flipped bit would load silently."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise ValueError(f"record {bad} fails its CRC check")


def model_state(obj: Any) -> Any:
    """The model weights of a loaded checkpoint: a snapshot dict's ``model`` entry, or the
    object itself (a plain state dict)."""
    return obj["model"] if isinstance(obj, dict) and "model" in obj else obj


def load_state_dict_checked(model: torch.nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into ``model`` after checking that keys and shapes agree.

    The error names the source file and the first mismatches, e.g. a checkpoint of another
    model or class count.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shape:
        parts = []
        if shape:
            parts.append("shape mismatch " + "; ".join(shape[:3]))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"checkpoint {source} does not fit this model: {', '.join(parts)}. "
            "It was made for another model or class count: pass the checkpoint of the same "
            "--model and --dataset."
        )
    model.load_state_dict(state)


def package_versions() -> dict[str, str]:
    """Versions of the packages that can change numbers, for provenance."""
    import importlib.metadata as md

    out = {}
    for name in ("hypersparse", "torch", "torchvision", "numpy", "snakemake", "scikit-learn"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The git commit of the source tree (with '+dirty' if it has changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
