"""xRDA: generalised regularised dual averaging with an adaptively weighted l1 penalty.

Siegel, Chen, Zhang, Xu, "Training Sparse Neural Networks using Compressed Sensing",
arXiv 2008.09661 (PAPER_NOTES.md section 2). Sparsity is produced by a soft threshold, so
pruned weights are exact zeros; how many there are is set by ``lam``, not by a target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from .masks import is_prunable_tensor


def cosine_schedule(k: int, K: int, h0: float) -> tuple[float, float]:
    """(step size h_k, averaging parameter beta_k) of the cosine schedule at iteration k of K.

    h_k = h0/2 (1 + cos(pi k/K)) falls from h0 to 0 while beta_k = (1 - cos(pi k/K))/2 rises
    from 0 to 1; k is clamped to [0, K], so iterations past K take no step (h = 0, beta = 1).
    """
    if K <= 0:
        raise ValueError(f"K (number of iterations) must be positive, got {K}")
    cos = math.cos(math.pi * min(max(k, 0), K) / K)
    return 0.5 * h0 * (1.0 + cos), 0.5 * (1.0 - cos)


def l1_weights(a: torch.Tensor, M: float) -> torch.Tensor:
    """Per-weight l1 weight c = M / (1 + (M-1) a/max(a)) of one prunable tensor (0 if a == 0).

    Small running magnitudes get weight up to M, the largest weight 1: the reweighting of a
    log(eps + |w|) penalty. ``max(a)`` is over the whole tensor. Computed without a host sync.
    """
    amax = a.max()
    c = M / (1.0 + (M - 1.0) * (a / amax.clamp_min(torch.finfo(a.dtype).tiny)))
    return torch.where(amax > 0, c, torch.zeros_like(c))


class XRDA(Optimizer):
    """The authors' xRDA update with the cosine schedule built in (it knows k and K).

    Per parameter tensor p with gradient, at iteration k (1-based, as in the authors'
    ``training_algorithms/RDA.py``, whose counter starts at 1), with (h, beta) =
    :func:`cosine_schedule` (k, K, h0):

    1. g = grad + wd * p (weight decay on every parameter, biases and BN included, as the
       authors' code does; unlike their code, ``p.grad`` itself is left unchanged).
    2. Only for prunable tensors (:func:`hypersparse.masks.is_prunable_tensor`: conv/linear
       weights):
       a <- exp(-h/tau_b) a + (1 - exp(-h/tau_b)) |p|   (a starts at 0, is per weight),
       c = :func:`l1_weights` (a, M)  (max(a) per tensor, as in ``regularization/l1_prox.py``),
       B <- beta B + h c   (B starts at 0).
       1-D tensors (biases, BN) have c = 0, so B stays 0 and their threshold is 0: this class
       keeps no a/B state for them (their update is identical to the authors').
    3. z <- beta z + (1 - beta) p   (z starts as a copy of p at the first step),
       v <- exp(-h/tau) v + (1 - exp(-h/tau)) g   (v starts at 0),
       z <- z - h v.
    4. p <- sign(z) max(|z| - lam B, 0): the soft threshold, written so that thresholded
       entries are +0.0 exactly.

    The order of these updates is the authors'. The difference from their code: a 2-D
    tensor whose running average is all zero gets c = 0 here (their operator divides 0/0).
    ``group["lr"]`` only reports the step size of the next iteration (for logs); the schedule
    is driven by ``group["k"]`` (iterations done), which ``state_dict`` saves, so a resumed
    optimizer continues bit-identically. Parameters without a gradient are skipped (no state
    change), as in the authors' code.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        K: int,
        h0: float = 1.0,
        tau: float = 9.5,
        tau_b: float = 9.5,
        lam: float = 1e-6,
        M: float = 500.0,
        weight_decay: float = 5e-4,
    ) -> None:
        if K <= 0:
            raise ValueError(f"K must be a positive number of iterations, got {K}")
        if h0 <= 0 or tau <= 0 or tau_b <= 0:
            raise ValueError(f"h0, tau and tau_b must be positive, got {h0}, {tau}, {tau_b}")
        if lam < 0 or weight_decay < 0:
            raise ValueError(f"lam and weight_decay must be >= 0, got {lam}, {weight_decay}")
        if M < 1:
            raise ValueError(f"M must be >= 1, got {M}")
        defaults = dict(
            lr=cosine_schedule(1, K, h0)[0],
            h0=h0,
            K=int(K),
            k=0,
            tau=tau,
            tau_b=tau_b,
            lam=lam,
            M=M,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One xRDA iteration on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            k = int(group["k"]) + 1
            h, beta = cosine_schedule(k, group["K"], group["h0"])
            # (1 - exp(-x)) as -expm1(-x): accurate for the small h/tau near the end.
            keep_v, new_v = math.exp(-h / group["tau"]), -math.expm1(-h / group["tau"])
            keep_a, new_a = math.exp(-h / group["tau_b"]), -math.expm1(-h / group["tau_b"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._update(p, group, h, beta, (keep_v, new_v), (keep_a, new_a))
            group["k"] = k
            group["lr"] = cosine_schedule(k + 1, group["K"], group["h0"])[0]
        return loss

    def _update(
        self,
        p: torch.Tensor,
        group: dict[str, Any],
        h: float,
        beta: float,
        dv: tuple[float, float],
        da: tuple[float, float],
    ) -> None:
        state = self.state[p]
        prunable = is_prunable_tensor(p)
        if len(state) == 0:
            state["z"] = p.detach().clone()
            state["v"] = torch.zeros_like(p)
            if prunable:
                state["a"] = torch.zeros_like(p)
                state["B"] = torch.zeros_like(p)
        g = p.grad
        if group["weight_decay"] != 0:
            g = g.add(p, alpha=group["weight_decay"])
        z, v = state["z"], state["v"]
        if prunable:
            a, B = state["a"], state["B"]
            a.mul_(da[0]).add_(p.abs(), alpha=da[1])
            B.mul_(beta).add_(l1_weights(a, group["M"]), alpha=h)
        z.mul_(beta).add_(p, alpha=1.0 - beta)
        v.mul_(dv[0]).add_(g, alpha=dv[1])
        z.add_(v, alpha=-h)
        if prunable and group["lam"] != 0:
            shrunk = (z.abs() - group["lam"] * B).clamp_min_(0.0)
            p.copy_(torch.where(shrunk > 0, torch.sign(z) * shrunk, torch.zeros_like(z)))
        else:
            p.copy_(z)

    def num_iterations(self) -> int:
        """Iterations taken so far (the k of the last step)."""
        return int(self.param_groups[0]["k"])


__all__ = ["XRDA", "cosine_schedule", "l1_weights"]
