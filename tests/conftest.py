"""Shared fixtures: a prepared digits cache and small run specs that train in seconds on CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # tests compare numbers bit for bit; keep them single-threaded


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with the bundled digits prepared at 16 px (no network)."""
    from hypersparse.data import prepare_dataset

    root = tmp_path_factory.mktemp("data")
    prepare_dataset("digits", root, download=False, image_size=16)
    return root


@pytest.fixture
def make_spec(digits_root: Path):
    """Factory for tiny digits RunSpecs: make_spec(method=..., kappa=..., params=..., epochs=...)."""
    from hypersparse.spec import RunSpec

    def make(
        family: str = "dense",
        *,
        kappa: float = 0.0,
        params: dict[str, Any] | None = None,
        epochs: int = 2,
        finetune_epochs: int = 2,
        model: str = "resnet8",
        width: float = 0.25,
        seed: int = 0,
        batch_size: int = 128,
        label: str | None = None,
        snapshot_epochs: tuple[int, ...] = (),
    ) -> RunSpec:
        return RunSpec.from_dict(
            {
                "dataset": "digits",
                "model": model,
                "method": label or family,
                "family": family,
                "kappa": kappa,
                "seed": seed,
                "width": width,
                "image_size": 16,
                "data_root": str(digits_root),
                "device": "cpu",
                "optim": {"batch_size": batch_size, "lr": 0.05},
                "dense": {"epochs": epochs, "milestones": [], "gamma": 0.1},
                "finetune": {"epochs": finetune_epochs, "milestones": [], "gamma": 0.1},
                "params": params or {},
                "snapshot_epochs": list(snapshot_epochs),
            }
        )

    return make


@pytest.fixture
def dense_run(make_spec, tmp_path: Path):
    """A finished 2-epoch dense run folder (with snapshot_e1.pt) to start sparse methods from."""
    from hypersparse.runner import execute

    spec = make_spec("dense", epochs=2, snapshot_epochs=(1,))
    out = tmp_path / "dense"
    execute(spec, out, progress=False)
    return out


def hypersparse_cmd() -> list[str]:
    """The CLI as a subprocess command (the venv's console script)."""
    exe = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "hypersparse"
    return [str(exe)] if exe.exists() else ["python", "-m", "hypersparse"]
