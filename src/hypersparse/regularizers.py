"""Weight regularizers placed in the ART loss: HyperSparse (HS), L1 and L2 (PAPER_NOTES.md sec. 1).

HyperSparse, for the flattened prunable weights w (N of them) and pruning rate kappa:

    s   = 0.6585 / a_k,  a_k = the floor(kappa*N)-th smallest |w| (0-based), detached
    T   = sum_j tanh(s |w_j|)
    dL/dw_i = sign(w_i) * s * sech^2(s |w_i|) * ||w||_1 / T          (s, T, ||w||_1 constants)

Only this gradient matters. The authors' loss value, sum|w| * T / stopgrad(T) - sum|w|, is
identically 0; :func:`hypersparse_loss` returns the same value (exactly 0, so a logged total
loss CE + alpha * HS equals the authors'), and its autograd gradient is the closed form above.
In training, ART adds alpha * dL/dw straight into ``w.grad`` after the cross-entropy backward
(:class:`HyperSparseGradient`), which is the same sum without an autograd round trip.

Speed (the project target: a training step with HS costs <= 1.05x one without), three passes
over the weights in cache-sized chunks, through buffers that persist across steps:
1. |w| into the buffer, ||w||_1, and the block counts that give a_k exactly
   (:mod:`hypersparse.hs_select`; inside training the bracket is the previous a_k +- a
   margin that adapts to how fast a_k moves, so only ~1e-4 of the weights are gathered);
2. p = sigma(2 s |w|) in place and its sum (T = 2 sum p - N, as tanh(x) = 2 sigma(2x) - 1;
   the sigmoid kernel is about 3x faster than tanh on CPU), then p (1 - p) = sech^2(s|w|) / 4;
3. w.grad += alpha * 4 s ||w||_1 / T * sign(w) p (1 - p).
Sums are per chunk in float32 (pairwise inside PyTorch) and accumulated in float64; at
N = 1e8 the gradient still matches a float64 reference to < 1e-5 (tests).

On CUDA (``sync_free``) the same three passes run over whole tensors, a_k comes from the
radix select of :mod:`hypersparse.select` (exact, on the device), and nothing reads a value
back to the host: the step can be captured in a CUDA graph, with alpha a device tensor.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from hypersparse import hs_select
from hypersparse.hs_select import kth_smallest_abs
from hypersparse.masks import target_zeros
from hypersparse.select import kth_smallest, radix_kth

HS_CONSTANT = 0.6585  # ~ artanh(1/sqrt(3)): sech^2(s|w|) has its inflection at |w| = a_k

_HINT_MARGIN = (2e-4, 0.05)  # relative half-width of the previous-a_k bracket: (min, max)

__all__ = [
    "HS_CONSTANT",
    "REGULARIZERS",
    "HyperSparseGradient",
    "hs_threshold_scale",
    "hypersparse_grad",
    "hypersparse_loss",
    "kth_smallest_abs",
    "l1_loss",
    "l2_loss",
]


def _check_rate(prune_rate: float) -> None:
    """Raise ValueError unless 0 <= prune_rate < 1."""
    if not 0.0 <= float(prune_rate) < 1.0:
        raise ValueError(f"prune_rate must be in [0, 1), got {prune_rate}")


def _scale_from_threshold(a_k: Tensor) -> Tensor:
    """s = 0.6585 / a_k, with a_k clamped to the smallest positive normal number.

    a_k = 0 means more than floor(kappa*N) weights are exactly 0 (the target sparsity is
    already met). The clamp keeps s finite (~5.6e37 in float32); the HS gradient is then
    defined as exactly 0, the limit s -> infinity of the formula for every nonzero weight.
    """
    a_k = a_k.detach()
    tiny = torch.finfo(a_k.dtype).tiny if a_k.is_floating_point() else 1e-38
    return HS_CONSTANT / a_k.clamp_min(tiny)


def hs_threshold_scale(flat_abs_w: Tensor, prune_rate: float) -> Tensor:
    """s = 0.6585 / a_k for a flat vector of |w| (a_k by exact selection; detached, 0-d)."""
    _check_rate(prune_rate)
    n = flat_abs_w.numel()
    if n == 0:
        raise ValueError("hs_threshold_scale needs at least one weight")
    k = min(target_zeros(prune_rate, n), n - 1)
    return _scale_from_threshold(kth_smallest_abs([flat_abs_w], k))


def _whole(t: Tensor) -> list[Tensor]:
    """A tensor as one piece (the sync-free path works on whole tensors)."""
    return [t.detach()]


class HyperSparseGradient:
    """The exact HS gradient of a fixed list of weights, step after step.

    Keeps one |w|-sized buffer per weight and chunk-sized scratch between calls (no large
    allocations per step), and the last a_k, whose neighbourhood brackets the next a_k.
    Neither changes a result: a_k is the exact order statistic whatever the bracket.
    ``sync_free`` (default: on CUDA) finds a_k by radix select on the device and never
    synchronises with the host (CUDA-graph capturable); on CPU the bracket path is faster.
    """

    def __init__(self, sync_free: bool | None = None) -> None:
        self.sync_free = sync_free
        self.last_a_k: Tensor | None = None  # the threshold of the last step (logs)
        self._key: tuple | None = None
        self._hint: float | None = None
        self._margin = _HINT_MARGIN[0]
        self.bracket_misses = 0  # steps whose previous-a_k bracket missed (for benchmarks)

    def _prepare(self, weights: Sequence[Tensor]) -> None:
        """(Re)build buffers when the weights are not the ones of the last call."""
        if len(weights) == 0:
            raise ValueError("hypersparse regularizer needs at least one weight tensor")
        key = tuple((w.data_ptr(), tuple(w.shape), w.stride(), w.dtype) for w in weights)
        if key == self._key:
            return
        n = sum(w.numel() for w in weights)
        if n == 0:
            raise ValueError("hypersparse regularizer needs at least one weight")
        self._key, self._hint, self._margin, self.n = key, None, _HINT_MARGIN[0], n
        device = weights[0].device
        sync_free = device.type != "cpu" if self.sync_free is None else self.sync_free
        self.buffers = [torch.empty_like(w.detach()) for w in weights]
        self._chunks = _whole if sync_free else hs_select.cpu_chunks
        self.w_chunks = [c for w in weights for c in self._chunks(w)]
        self.b_chunks = [c for b in self.buffers for c in self._chunks(b)]
        self.on_cpu = not sync_free  # the host-assisted path (bracket, Python scalars)
        self.scratch = hs_select.Scratch(self.b_chunks) if self.on_cpu else None
        self._k: dict[int, Tensor] = {}  # k -> int64 0-d tensor on the device (sync-free path)

    def _threshold(self, k: int) -> tuple[Tensor, Tensor]:
        """Pass 1: buffers = |w|; returns (a_k, ||w||_1 in float64)."""
        count, brackets = None, None
        if self.on_cpu and self.n > hs_select.SMALL_N:
            brackets = self._brackets(k)
            count = hs_select.BracketCount(*next(brackets), self.scratch)
        l1_parts = []
        for wc, bc in zip(self.w_chunks, self.b_chunks, strict=True):
            a = torch.abs(wc, out=bc)
            l1_parts.append(a.sum())
            if count is not None:
                count.add(a)
        l1 = torch.stack(l1_parts).double().sum()
        if not self.on_cpu:  # exact radix select on the device, no host synchronisation
            if k not in self._k:
                self._k[k] = torch.full((), k, dtype=torch.int64, device=self.buffers[0].device)
            return radix_kth(self.b_chunks, self._k[k]), l1
        if count is None:  # small inputs: a plain selection is as fast
            return kth_smallest(torch.cat([b.reshape(-1) for b in self.b_chunks]), k), l1
        # the first bracket's count is ``count``; the iterator holds the ones after it
        brackets = itertools.chain([(count.lo, count.hi)], brackets)
        a_k, hit = hs_select.kth_abs_of_chunks(self.b_chunks, k, brackets, self.scratch, count)
        self._update_hint(float(a_k), hit)
        return a_k, l1

    def _brackets(self, k: int) -> Iterator[tuple[float, float]]:
        """Brackets for a_k, in the order tried: the previous a_k +- the margin (if any), then
        the sampled ones (the sample is only taken when it is reached)."""
        if self._hint is not None:
            yield (self._hint * (1.0 - self._margin), self._hint * (1.0 + self._margin))
        yield from hs_select.sampled_brackets(self.w_chunks, k)

    def _update_hint(self, a_k: float, hit: bool) -> None:
        """Next bracket: a_k +- a margin ~4x its last relative move, within _HINT_MARGIN."""
        lo, hi = _HINT_MARGIN
        if self._hint is not None:
            self.bracket_misses += not hit
            move = abs(a_k / self._hint - 1.0)
            self._margin = min(hi, max(lo, 4.0 * move, 0.8 * self._margin))
        self._hint = a_k if 0.0 < a_k < math.inf else None

    @torch.no_grad()
    def _direction(self, weights: Sequence[Tensor], prune_rate: float) -> Tensor | None:
        """Passes 1-2: buffers = p (1 - p), p = sigma(2 s |w|); returns c = 4 s ||w||_1 / T.

        The HS gradient is c * sign(w) * buffer. None when a_k = 0 (gradient exactly 0).
        """
        _check_rate(prune_rate)
        self._prepare(weights)
        k = min(target_zeros(prune_rate, self.n), self.n - 1)
        a_k, l1 = self._threshold(k)
        self.last_a_k = a_k
        if self.on_cpu and float(a_k) == 0.0:
            return None
        s_t = _scale_from_threshold(a_k)
        two_s: float | Tensor = 2.0 * float(s_t) if self.on_cpu else 2.0 * s_t
        p_parts = []
        for bc in self.b_chunks:
            p = bc.mul_(two_s).sigmoid_()
            p_parts.append(p.sum())
            p.addcmul_(p, p, value=-1.0)  # p (1 - p) = sech^2(s|w|) / 4
        t = 2.0 * torch.stack(p_parts).double().sum() - self.n  # T = sum (2p - 1)
        # a_k = 0 on CUDA (no host sync to test it): s is huge, and c = 0 unless T > 0.
        c = torch.where(t > 0, 4.0 * s_t.double() * l1 / t.clamp_min(1e-300), torch.zeros_like(t))
        if not self.on_cpu:
            c = torch.where(a_k > 0, c, torch.zeros_like(c))
        return c.clamp_max(torch.finfo(self.buffers[0].dtype).max)

    @torch.no_grad()
    def add_to_grads_(self, weights: Sequence[Tensor], prune_rate: float,
                      alpha: float | Tensor) -> None:
        """w.grad += alpha * dHS/dw for every weight (a missing grad counts as zero).

        ``alpha`` may be a device tensor (read inside a captured graph, set between replays).
        """
        _check_rate(prune_rate)
        self._prepare(weights)
        if isinstance(alpha, Tensor) and self.on_cpu:
            alpha = float(alpha)
        if not isinstance(alpha, Tensor) and alpha == 0.0:
            return
        c = self._direction(weights, prune_rate)
        if c is None:
            return
        grads = []
        for w in weights:
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            grads.extend(self._chunks(w.grad))
        fmax = torch.finfo(self.buffers[0].dtype).max
        value = max(-fmax, min(fmax, alpha * float(c))) if self.on_cpu else 0.0
        for wc, bc, gc in zip(self.w_chunks, self.b_chunks, grads, strict=True):
            if self.on_cpu:
                sign = torch.sign(wc, out=self.scratch.buf(0, wc))
                gc.addcmul_(sign, bc, value=value)
            else:
                gc.addcmul_(torch.sign(wc), bc.mul_((alpha * c).to(bc.dtype)))

    @torch.no_grad()
    def gradient(self, weights: Sequence[Tensor], prune_rate: float) -> tuple[list[Tensor], Tensor]:
        """(h, c): new tensors h = sign(w) p (1 - p) and the scalar c; dHS/dw = c * h."""
        c = self._direction(weights, prune_rate)
        if c is None:
            hs = [torch.zeros_like(w) for w in weights]
            return hs, torch.zeros((), dtype=hs[0].dtype, device=hs[0].device)
        hs = [torch.empty_like(w) for w in weights]
        h_chunks = [ch for h in hs for ch in self._chunks(h)]
        for wc, bc, hc in zip(self.w_chunks, self.b_chunks, h_chunks, strict=True):
            torch.sign(wc, out=hc).mul_(bc)
        return hs, c.to(hs[0].dtype)


class _HyperSparseFunction(torch.autograd.Function):
    """Value 0; gradient c * h_i computed in the forward pass, scaled in place in backward."""

    @staticmethod
    def forward(ctx, prune_rate: float, *weights: Tensor) -> Tensor:  # type: ignore[override]
        hs, c = HyperSparseGradient().gradient(weights, prune_rate)
        ctx.hs, ctx.c = hs, c
        return torch.zeros((), dtype=weights[0].dtype, device=weights[0].device)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple:  # type: ignore[override]
        hs = ctx.hs
        if hs is None:
            raise RuntimeError(
                "hypersparse_loss: backward ran twice through one loss (its buffers are "
                "reused in place); compute hypersparse_loss again for a second backward"
            )
        ctx.hs = None
        factor = grad_out.to(ctx.c.dtype) * ctx.c
        return (None, *[h.mul_(factor) for h in hs])


def hypersparse_loss(weights: Sequence[Tensor], prune_rate: float) -> Tensor:
    """HyperSparse loss: value exactly 0 (as the authors'), gradient the closed form (doc)."""
    _check_rate(prune_rate)
    return _HyperSparseFunction.apply(float(prune_rate), *weights)


def hypersparse_grad(weights: Sequence[Tensor], prune_rate: float) -> list[Tensor]:
    """Closed-form HS gradient per weight tensor, without autograd (for traces and tests)."""
    hs, c = HyperSparseGradient().gradient(weights, prune_rate)
    return [h.mul_(c) for h in hs]


def l1_loss(weights: Sequence[Tensor]) -> Tensor:
    """sum |w| over all tensors (the L1 ablation inside ART)."""
    return torch.stack([w.abs().sum() for w in weights]).sum()


def l2_loss(weights: Sequence[Tensor]) -> Tensor:
    """sum w^2 over all tensors, without the 1/2 (the L2 ablation inside ART)."""
    return torch.stack([w.square().sum() for w in weights]).sum()


def _l1_regularizer(weights: Sequence[Tensor], prune_rate: float) -> Tensor:
    """L1 in the regularizer signature (the pruning rate is unused)."""
    return l1_loss(weights)


def _l2_regularizer(weights: Sequence[Tensor], prune_rate: float) -> Tensor:
    """L2 in the regularizer signature (the pruning rate is unused)."""
    return l2_loss(weights)


REGULARIZERS: dict[str, Callable[[Sequence[Tensor], float], Tensor]] = {
    "hs": hypersparse_loss,
    "l1": _l1_regularizer,
    "l2": _l2_regularizer,
}
