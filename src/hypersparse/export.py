"""A finished run's model for use elsewhere: its mask (safetensors), ONNX, a sparse state dict.

- ``mask.safetensors`` (written by every pruned run): one bool tensor per prunable layer,
  True where the final weight is nonzero; a small, safe format (no pickle).
- :func:`export_onnx`: the final model in eval mode as ONNX (batch size dynamic), as the
  authors' repository ships an ONNX converter.
- :func:`export_sparse_state`: the state dict with every prunable weight as a sparse COO
  tensor (``torch.load(..., weights_only=True)`` reads it; ``.to_dense()`` gives the weight).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import masks as mask_ops
from .errors import UserError
from .io import CheckpointError, atomic_write, load_state_dict_checked, safe_torch_load

MASK_FILE = "mask.safetensors"


class ExportError(UserError, RuntimeError):
    """A run folder that cannot be exported (unfinished, failed, or without its files)."""


def write_mask(run_dir: Path, state: dict[str, torch.Tensor]) -> Path:
    """``mask.safetensors`` of a run: nonzero pattern of each prunable weight (bool)."""
    from safetensors.torch import save_file

    masks = {k: (v != 0).contiguous() for k, v in mask_ops.prunable_state_items(state)}
    path = Path(run_dir) / MASK_FILE
    atomic_write(path, lambda tmp: save_file(masks, tmp, metadata={"format": "hypersparse-mask"}))
    return path


def read_mask(path: Path) -> dict[str, torch.Tensor]:
    """The masks of a ``mask.safetensors`` file."""
    from safetensors.torch import load_file

    return load_file(str(path))


def load_run_model(run_dir: Path) -> tuple[nn.Module, dict]:
    """(the run's final model in eval mode on CPU, its spec) from spec.json and model.pt."""
    from .data import dataset_info
    from .models import build_model

    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        raise ExportError(f"{run_dir} holds no finished run (metrics.json missing or "
                          "unreadable); export a finished run folder") from None
    if metrics.get("status") != "ok":
        raise ExportError(f"{run_dir} is a run that failed; there is no model to export")
    spec = metrics["spec"]
    info = dataset_info(spec["dataset"], image_size=spec.get("image_size"),
                        root=spec.get("data_root"))
    model = build_model(spec["model"], info.num_classes, in_channels=info.in_channels,
                        width=spec["width"])
    try:
        state = safe_torch_load(run_dir / "model.pt")
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    load_state_dict_checked(model, state, str(run_dir / "model.pt"))
    return model.eval(), {**spec, "image_size": info.image_size,
                          "in_channels": info.in_channels}


def export_onnx(run_dir: Path, out: Path) -> Path:
    """The run's final model as ONNX (input ``images``: N x C x H x W float, output ``logits``)."""
    model, spec = load_run_model(run_dir)
    x = torch.zeros(2, spec["in_channels"], spec["image_size"], spec["image_size"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(model, (x,), str(out), input_names=["images"], output_names=["logits"],
                      dynamic_shapes={"x": {0: batch}}, dynamo=True, verbose=False)
    return out


def export_sparse_state(run_dir: Path, out: Path) -> Path:
    """The run's state dict with prunable weights as sparse COO tensors."""
    _, _ = load_run_model(run_dir)  # the checks: finished, loadable, fits its model
    state = safe_torch_load(Path(run_dir) / "model.pt")
    prunable = {k for k, _ in mask_ops.prunable_state_items(state)}
    sparse = {k: (v.to_sparse() if k in prunable else v) for k, v in state.items()}
    out = Path(out)
    atomic_write(out, lambda tmp: torch.save(sparse, tmp))
    return out
