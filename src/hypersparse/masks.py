"""The one place that knows which weights are prunable, and how masks are built and applied.

Prunable = the weight tensor of every ``Conv2d`` and ``Linear`` (first conv, 1x1 shortcuts and
the classifier included); biases and BatchNorm parameters never are (PAPER_NOTES.md section 1).
Sparsity is global: one threshold over the concatenation of all prunable weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .select import kth_smallest

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

Masks = dict[str, torch.Tensor]


def prunable_named_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(parameter name, weight) for every Conv2d/Linear weight, in module order."""
    out = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE_TYPES):
            out.append((f"{mod_name}.weight" if mod_name else "weight", mod.weight))
    return out


def prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    """The prunable weight tensors of ``model`` (see module docstring)."""
    return [w for _, w in prunable_named_weights(model)]


def is_prunable_tensor(tensor: torch.Tensor) -> bool:
    """Prunable test on a bare tensor (an optimizer's parameter): Conv and Linear weights are
    the only floating tensors of these models with two or more dimensions (biases and
    BatchNorm parameters are 1-D), so this agrees with :func:`prunable_named_weights`."""
    return tensor.dim() >= 2 and tensor.is_floating_point()


def is_prunable_key(key: str, tensor: torch.Tensor) -> bool:
    """Prunable test on a saved state dict, where module types are gone (a ``*.weight`` entry
    that :func:`is_prunable_tensor` accepts)."""
    return key.endswith("weight") and is_prunable_tensor(tensor)


def prunable_state_items(state: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Prunable (key, tensor) pairs of a saved state dict, in its order."""
    return [(k, v) for k, v in state.items() if is_prunable_key(k, v)]


def num_prunable(model: nn.Module) -> int:
    """N: the number of prunable weights."""
    return sum(w.numel() for w in prunable_weights(model))


def target_zeros(kappa: float, n: int) -> int:
    """floor(kappa * N), the exact number of zeros a pruning rate kappa asks for."""
    if not 0.0 <= kappa < 1.0:
        raise ValueError(f"pruning rate kappa must be in [0, 1), got {kappa}")
    # The small epsilon keeps e.g. 0.9 * 1000 from flooring to 899 through float error.
    return int(math.floor(kappa * n + 1e-9))


def count_zeros(tensors: Iterable[torch.Tensor]) -> int:
    """Exact zeros over ``tensors`` (a pruned weight is exactly 0)."""
    return sum(int((t == 0).sum()) for t in tensors)


@torch.no_grad()
def layer_nonzeros(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(nonzero weights, size) of every prunable layer of a live model (one host read per
    layer): the per-epoch sparsity and FLOPs both come from it."""
    return {k: (int((w != 0).sum()), w.numel()) for k, w in prunable_named_weights(model)}


def keep_count(kappa: float, n: int) -> int:
    """N - floor(kappa * N): the number of weights a pruning rate kappa keeps."""
    return n - target_zeros(kappa, n)


def apportion(expected: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Integer counts close to ``expected`` (each in [0, cap]) summing exactly to ``total``.

    Largest-remainder rule: floor every entry, then hand the missing units one by one to the
    entries with the largest fractional parts (ties: earlier entry first), skipping full ones.
    """
    if not 0 <= total <= sum(caps):
        raise ValueError(f"cannot place {total} weights in layers of sizes {list(caps)}")
    counts = [min(c, max(0, math.floor(e))) for e, c in zip(expected, caps, strict=True)]
    rem = [e - math.floor(e) for e in expected]
    diff = total - sum(counts)
    while diff > 0:
        order = sorted(
            (i for i in range(len(counts)) if counts[i] < caps[i]), key=lambda i: -rem[i]
        )
        for i in order[:diff]:
            counts[i] += 1
        diff = total - sum(counts)
    while diff < 0:
        order = sorted((i for i in range(len(counts)) if counts[i] > 0), key=lambda i: rem[i])
        for i in order[:-diff]:
            counts[i] -= 1
        diff = total - sum(counts)
    return counts


def random_layer_masks(
    named: Sequence[tuple[str, torch.Tensor]], counts: Sequence[int], generator: torch.Generator
) -> Masks:
    """Exactly counts[i] kept weights in the i-th layer, at positions uniform at random (one
    ``randperm`` per layer, in order, from ``generator``), on each weight's device."""
    masks: Masks = {}
    for (name, w), c in zip(named, counts, strict=True):
        flat = torch.zeros(w.numel(), dtype=torch.bool)
        flat[torch.randperm(w.numel(), generator=generator)[:c]] = True
        masks[name] = flat.view(w.shape).to(w.device)
    return masks


def random_global_masks(
    named: Sequence[tuple[str, torch.Tensor]], kappa: float, generator: torch.Generator
) -> Masks:
    """Uniformly random global masks with exactly floor(kappa * N) pruned weights."""
    n = sum(w.numel() for _, w in named)
    flat = torch.ones(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=generator)[: target_zeros(kappa, n)]] = False
    return split_flat(flat, named)


def split_flat(flat: torch.Tensor, like: Sequence[tuple[str, torch.Tensor]]) -> Masks:
    """A flat vector cut into per-layer tensors shaped as ``like`` (its order)."""
    out: Masks = {}
    offset = 0
    for name, t in like:
        out[name] = flat[offset : offset + t.numel()].view(t.shape).clone()
        offset += t.numel()
    return out


def flat_abs(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """|w| of all tensors, detached and concatenated into one float32 vector."""
    return torch.cat([w.detach().abs().reshape(-1).float() for w in weights])


def topk_masks_from_scores(
    scores: Mapping[str, torch.Tensor] | list[tuple[str, torch.Tensor]], keep: int
) -> Masks:
    """Masks keeping exactly ``keep`` entries with the largest scores, globally.

    Ties are broken deterministically by position in the concatenated vector (earlier wins),
    so the count is exact even when many scores are equal (e.g. zeros).
    """
    items = list(scores.items()) if isinstance(scores, Mapping) else list(scores)
    flat = torch.cat([s.detach().reshape(-1).float() for _, s in items])
    n = flat.numel()
    if not 0 <= keep <= n:
        raise ValueError(f"cannot keep {keep} of {n} weights")
    keep_flat = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if keep > 0:
        # Selection, not a sort: everything above the keep-th largest value survives, and of
        # the entries equal to it the earliest positions fill the remaining places.
        thr = kth_smallest(flat, n - keep)
        keep_flat = flat > thr
        ties = torch.nonzero(flat == thr).flatten()
        keep_flat[ties[: keep - int(keep_flat.sum())]] = True
    return split_flat(keep_flat, items)


def magnitude_masks(named_weights: list[tuple[str, torch.Tensor]], kappa: float) -> Masks:
    """Global magnitude masks with exactly floor(kappa*N) zeros (smallest |w| pruned)."""
    n = sum(w.numel() for _, w in named_weights)
    return topk_masks_from_scores([(k, w.detach().abs()) for k, w in named_weights],
                                  keep_count(kappa, n))


def model_masks_by_magnitude(model: nn.Module, kappa: float) -> Masks:
    """Global magnitude masks over the prunable weights of ``model``."""
    return magnitude_masks(prunable_named_weights(model), kappa)


def zero_where_masked_(t: torch.Tensor, mask: torch.Tensor) -> None:
    """t[~mask] = 0 in place, allocating nothing.

    ``t.mul_(bool_mask)`` would first copy the mask to t's dtype on CPU (76 MiB and ~8x the
    time for VGG-19's 20M weights); ``torch.where`` with ``out=`` reads the bool mask as is.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"masks must be bool tensors, got {mask.dtype}")
    torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device), out=t)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the masked-out weights in place (no allocations)."""
    for name, w in prunable_named_weights(model):
        m = masks.get(name)
        if m is not None:
            zero_where_masked_(w, m)


@torch.no_grad()
def mask_gradients(model: nn.Module, masks: Masks) -> None:
    """Zero gradients of pruned weights so momentum buffers never pick them up."""
    for name, w in prunable_named_weights(model):
        m = masks.get(name)
        if m is not None and w.grad is not None:
            zero_where_masked_(w.grad, m)


@torch.no_grad()
def zero_momentum(optimizer: torch.optim.Optimizer | None, model: torch.nn.Module,
                  masks: Masks) -> None:
    """Zero SGD momentum buffers where ``masks`` is False (pruned or newly grown weights)."""
    if optimizer is None:
        return
    for name, w in prunable_named_weights(model):
        m = masks.get(name)
        buf = optimizer.state.get(w, {}).get("momentum_buffer")
        if m is not None and buf is not None:
            zero_where_masked_(buf, m)


def masks_to(masks: Masks, device: torch.device | str) -> Masks:
    """Move masks to ``device`` (bool tensors)."""
    return {k: v.to(device=device, dtype=torch.bool) for k, v in masks.items()}


def masks_from_state(state: Mapping[str, torch.Tensor]) -> Masks:
    """Masks read off saved weights: nonzero prunable weights are kept."""
    return {k: v != 0 for k, v in prunable_state_items(state)}


def sparsity_report(state: Mapping[str, torch.Tensor]) -> dict:
    """Global sparsity and per-layer density counted from (saved) weights.

    Returns num_prunable, num_zero, sparsity, layer_density {name: fraction nonzero},
    layer_size {name: numel} and disconnected_layers (layers with no nonzero weight).
    """
    items = prunable_state_items(state)
    nonzero = {k: int((v != 0).sum()) for k, v in items}  # one count per layer serves all
    size = {k: v.numel() for k, v in items}
    total = sum(size.values())
    zeros = total - sum(nonzero.values())
    density = {k: nonzero[k] / size[k] for k in nonzero}
    return {
        "num_prunable": total,
        "num_zero": zeros,
        "sparsity": zeros / total if total else 0.0,
        "layer_density": density,
        "layer_size": size,
        "disconnected_layers": [k for k, d in density.items() if d == 0.0],
    }
