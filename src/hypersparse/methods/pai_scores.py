"""Scores and masks of the pruning-at-initialisation baselines, as plain functions of a model.

Every function works on a private copy of the model (BatchNorm running statistics and weights of
the caller's model are never touched) and every mask it returns has exactly the requested
number of kept weights (exact counts, deterministic ties: :func:`topk_masks_from_scores`).
The method classes that drive training live in :mod:`hypersparse.methods.pai`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import (
    Masks,
    apportion,
    keep_count,
    prunable_named_weights,
    random_global_masks,
    random_layer_masks,
    topk_masks_from_scores,
)

Batch = tuple[torch.Tensor, torch.Tensor]
Scores = list[tuple[str, torch.Tensor]]


def _total(named: Sequence[tuple[str, torch.Tensor]]) -> int:
    return sum(t.numel() for _, t in named)


def masks_keep_highest(scores: Scores, kappa: float) -> Masks:
    """Keep the (1-kappa)N highest scores globally (SNIP, SynFlow)."""
    return topk_masks_from_scores(scores, keep_count(kappa, _total(scores)))


def masks_remove_highest(scores: Scores, kappa: float) -> Masks:
    """Remove the floor(kappa*N) highest scores globally, i.e. keep the lowest (GraSP)."""
    return topk_masks_from_scores([(k, -s) for k, s in scores], keep_count(kappa, _total(scores)))


def random_masks(model: nn.Module, kappa: float, generator: torch.Generator) -> Masks:
    """Uniformly random global mask with exactly floor(kappa*N) pruned weights."""
    return random_global_masks(prunable_named_weights(model), kappa, generator)


def _scoring_copy(model: nn.Module) -> tuple[nn.Module, Scores]:
    """A train-mode copy of ``model`` (BN uses batch statistics) and its prunable weights."""
    net = copy.deepcopy(model)
    net.train()
    net.zero_grad(set_to_none=True)
    named = prunable_named_weights(net)
    for _, w in named:
        w.requires_grad_(True)
    return net, named


def snip_scores(model: nn.Module, batches: Sequence[Batch]) -> Scores:
    """SNIP connection sensitivity |g * w|, g = dCE/dw summed over ``batches`` (Lee et al. 2019)."""
    if not batches:
        raise ValueError("SNIP needs at least one batch")
    net, named = _scoring_copy(model)
    weights = [w for _, w in named]
    grads = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        for acc, g in zip(
            grads, torch.autograd.grad(F.cross_entropy(net(x), y), weights), strict=True
        ):
            acc += g
    return [(k, (g * w).detach().abs()) for (k, w), g in zip(named, grads, strict=True)]


def grasp_scores(
    model: nn.Module,
    batches: Sequence[Batch],
    temperature: float = 200.0,
    reinit_linear: bool = True,
    generator: torch.Generator | None = None,
) -> Scores:
    """GraSP score S = -w * (H g) at initialisation (Wang et al. 2020; authors' code semantics).

    Loss per batch b: L_b = CE(f(x_b) / T, y_b). First g = sum_b dL_b/dw (a constant,
    detached); then Hg = sum_b d/dw [ g . dL_b/dw ] by double back-propagation, i.e. the
    Hessian of each batch's loss times the total gradient. Weights with the highest S are
    removed. As in the authors' code the classifier of the *scoring copy* is re-initialised
    Xavier-normal when ``reinit_linear`` (its scores use those weights); the trained model
    keeps its own initialisation.
    """
    if not batches:
        raise ValueError("GraSP needs at least one batch")
    net, named = _scoring_copy(model)
    if reinit_linear:
        with torch.no_grad():
            for mod in net.modules():
                if isinstance(mod, nn.Linear):  # drawn on the CPU: same numbers on any device
                    fresh = torch.empty(mod.weight.shape, dtype=mod.weight.dtype)
                    mod.weight.copy_(nn.init.xavier_normal_(fresh, generator=generator))
    weights = [w for _, w in named]
    g = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        loss = F.cross_entropy(net(x) / temperature, y)
        for acc, gb in zip(g, torch.autograd.grad(loss, weights), strict=True):
            acc += gb
    hg = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        loss = F.cross_entropy(net(x) / temperature, y)
        grad_f = torch.autograd.grad(loss, weights, create_graph=True)
        z = sum((gi.detach() * gf).sum() for gi, gf in zip(g, grad_f, strict=True))
        for acc, h in zip(hg, torch.autograd.grad(z, weights), strict=True):
            acc += h
    return [(k, (-w * h).detach()) for (k, w), h in zip(named, hg, strict=True)]


class _SynFlowNet:
    """A linearised copy of a model: |theta| for every parameter and buffer, BN in eval mode."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], double: bool) -> None:
        self.net = copy.deepcopy(model).eval()
        self.dtype = torch.float64 if double else torch.float32
        self.net.to(dtype=self.dtype)
        with torch.no_grad():
            for t in self.net.state_dict().values():
                if t.is_floating_point():
                    t.abs_()
        self.named = prunable_named_weights(self.net)
        self.abs_weights = [w.detach().clone() for _, w in self.named]
        device = self.abs_weights[0].device
        self.x = torch.ones((1, *input_shape), dtype=self.dtype, device=device)

    def scores(self, masks: Masks | None = None) -> Scores:
        """|w * dR/dw| with R = sum(f(1)) of the linearised network with pruned weights at 0."""
        with torch.no_grad():
            for (name, w), w0 in zip(self.named, self.abs_weights, strict=True):
                w.copy_(w0 if masks is None else w0 * masks[name].to(w0.device))
        weights = [w.requires_grad_(True) for _, w in self.named]
        grads = torch.autograd.grad(self.net(self.x).sum(), weights)
        return [(k, (g * w).detach().abs()) for (k, w), g in zip(self.named, grads, strict=True)]


def synflow_scores(
    model: nn.Module, input_shape: Sequence[int], masks: Masks | None = None, double: bool = False
) -> Scores:
    """One round of SynFlow scores (Tanaka et al. 2020); needs no data, only the input shape."""
    return _SynFlowNet(model, input_shape, double).scores(masks)


def synflow_round_keeps(n: int, kappa: float, iterations: int) -> list[int]:
    """Weights kept after each round k = 1..T: N - int((1 - d^(k/T)) N) with d = 1 - kappa,
    the rounding of Synaptic-Flow's ``prune_loop`` + ``_global_mask``; the last round keeps
    exactly N - floor(kappa*N) (the project's exact count; the two differ only by float error).
    """
    density = 1.0 - kappa
    keeps = [n - int((1.0 - density ** (k / iterations)) * n) for k in range(1, iterations)]
    final = keep_count(kappa, n)
    return [max(final, k) for k in keeps] + [final]


def synflow_masks(
    model: nn.Module,
    input_shape: Sequence[int],
    kappa: float,
    iterations: int = 100,
    double: bool = False,
) -> Masks:
    """Iterative SynFlow: round k = 1..T keeps :func:`synflow_round_keeps` weights,
    re-scoring the network with the previous round's mask applied.

    Pruned weights are never revived (they rank below every unpruned weight).
    """
    sf = _SynFlowNet(model, input_shape, double)
    n = _total(sf.named)
    masks: Masks | None = None
    for keep in synflow_round_keeps(n, kappa, iterations):
        scores = sf.scores(masks)
        if masks is not None:  # already pruned: below every live weight (live scores >= 0)
            scores = [(name, torch.where(masks[name], s, -1.0)) for name, s in scores]
        masks = topk_masks_from_scores(scores, keep)
    assert masks is not None
    return {k: v.cpu() for k, v in masks.items()}


def smart_ratio_densities(
    sizes: Sequence[int],
    is_linear: Sequence[bool],
    keep: int,
    linear_keep_ratio: float = 0.3,
    index_decay: bool = False,
) -> list[float]:
    """Smart-Ratio layer keep ratios p_l (Su et al. 2020, authors' code semantics).

    Layers l = 1..L in module order. Non-classifier layers get p_l = c * ((L-l+1)^2 + (L-l+1)),
    divided by l^2 when ``index_decay`` (VGG); Linear layers keep floor(linear_keep_ratio * n_l)
    weights. c makes sum_l p_l n_l = keep. Ratios above 1 are capped and the excess moves on to
    the following layers in order (filling each up to 1, wrapping round, the classifier last).
    Fallback (deviation; the authors' code breaks there): if the fixed classifier budget alone
    reaches ``keep`` (extreme sparsity with many classes, e.g. ResNet-32 on CIFAR-100 at
    99.8%), the classifier gets floor(keep/2) weights and the other layers share the rest, so
    neither part is disconnected. A network of Linear layers only follows the formula throughout.
    """
    n_layers = len(sizes)
    raw = [float((n_layers - i) ** 2 + (n_layers - i)) for i in range(n_layers)]
    if index_decay:
        raw = [r / (i + 1) ** 2 for i, r in enumerate(raw)]
    fixed = [
        math.floor(linear_keep_ratio * n) if lin else None
        for n, lin in zip(sizes, is_linear, strict=True)
    ]
    if all(is_linear):
        fixed = [None] * n_layers
    budget = sum(f for f in fixed if f is not None)
    if budget >= keep:
        fixed = [None if f is None else f * (keep // 2) // budget for f in fixed]
    free = [i for i in range(n_layers) if fixed[i] is None]
    goal = keep - sum(f for f in fixed if f is not None)
    scale = goal / sum(raw[i] * sizes[i] for i in free)
    p = [float(f) / sizes[i] if f is not None else scale * raw[i] for i, f in enumerate(fixed)]
    excess = 0.0
    for i in free:  # cap at 1, the excess moves on to the next layers
        if p[i] > 1.0:
            excess += (p[i] - 1.0) * sizes[i]
            p[i] = 1.0
        elif excess > 0:
            take = min((1.0 - p[i]) * sizes[i], excess)
            p[i] += take / sizes[i]
            excess -= take
    for i in free + [i for i in range(n_layers) if fixed[i] is not None]:
        if excess <= 1e-9:
            break
        take = min((1.0 - p[i]) * sizes[i], excess)
        p[i] += take / sizes[i]
        excess -= take
    return [min(1.0, max(0.0, v)) for v in p]


def smart_ratio_masks(
    model: nn.Module,
    kappa: float,
    generator: torch.Generator,
    linear_keep_ratio: float = 0.3,
    index_decay: bool = False,
) -> Masks:
    """Random masks with Smart-Ratio layer counts, exactly (1-kappa)N kept in total."""
    named = prunable_named_weights(model)
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    sizes = [w.numel() for _, w in named]
    keep = keep_count(kappa, sum(sizes))
    dens = smart_ratio_densities(
        sizes, [id(w) in linear_weights for _, w in named], keep, linear_keep_ratio, index_decay
    )
    counts = apportion([d * n for d, n in zip(dens, sizes, strict=True)], sizes, keep)
    return random_layer_masks(named, counts, generator)
