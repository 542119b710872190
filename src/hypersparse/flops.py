"""FLOPs of sparse models and of whole training runs, and the size of a model stored sparsely.

Counted with PyTorch's maintained counter (``torch.utils.flop_counter.FlopCounterMode``; a
multiply-add is 2 FLOPs): the forward FLOPs of one image per prunable layer, dense. As RigL
and ShrinkBench report them, a sparse model's FLOPs are the dense FLOPs of each layer times
its density (the fraction of its weights that are nonzero), summed over layers. A training
step costs 3x the forward FLOPs of its images (forward, and a backward twice as costly), at
the layers' densities of that epoch (counted at its end); a whole run adds the dense run's
epochs it starts from (the warm-up of ART, the full dense run for OMP and LTH) and ART's
per-epoch evaluation of the pruned copy on the training set.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from . import masks as mask_ops

TRAIN_FACTOR = 3  # forward + backward (2x forward) FLOPs per training image


def layer_flops(model: nn.Module, in_channels: int, image_size: int) -> dict[str, int]:
    """Forward FLOPs of one image per prunable layer (its weight's name), dense."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    x = torch.zeros(1, in_channels, image_size, image_size, device=param.device,
                    dtype=param.dtype)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was)
    per_module = {name.split(".", 1)[1] if "." in name else "": sum(ops.values())
                  for name, ops in counter.get_flop_counts().items()}
    out = {}
    for name, _ in mask_ops.prunable_named_weights(model):
        module = name[: -len(".weight")] if name.endswith(".weight") else ""
        out[name] = int(per_module.get(module, 0))
    return out


def densities(nonzeros: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """Fraction of nonzero weights per prunable layer, from (nonzero, size) per layer
    (:func:`hypersparse.masks.layer_nonzeros`)."""
    return {k: nz / n for k, (nz, n) in nonzeros.items()}


def sparse_flops(per_layer: Mapping[str, int], density: Mapping[str, float]) -> float:
    """Forward FLOPs of one image of the sparse model: sum of dense FLOPs x density."""
    return float(sum(f * density.get(k, 1.0) for k, f in per_layer.items()))


def size_report(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Parameters, nonzero parameters and bytes stored dense (float32) and sparse (the
    prunable layers as value + int32 index per nonzero, everything else dense)."""
    prunable = dict(mask_ops.prunable_state_items(state))
    total = nonzero = sparse_bytes = 0
    for k, v in state.items():
        if not v.is_floating_point():
            continue
        total += v.numel()
        if k in prunable:
            nz = int((v != 0).sum())
            nonzero += nz
            sparse_bytes += nz * (4 + 4)
        else:
            nonzero += v.numel()
            sparse_bytes += v.numel() * 4
    return {"params": total, "params_nonzero": nonzero, "bytes_dense": total * 4,
            "bytes_sparse": sparse_bytes}
