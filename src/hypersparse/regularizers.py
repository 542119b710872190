"""Weight regularizers placed in the ART loss: HyperSparse (HS), L1 and L2 (PAPER_NOTES.md sec. 1).

HyperSparse, for the flattened prunable weights w (N of them) and pruning rate kappa:

    s   = 0.6585 / a_k,  a_k = the floor(kappa*N)-th smallest |w| (0-based), detached
    T   = sum_j tanh(s |w_j|)
    dL/dw_i = sign(w_i) * s * sech^2(s |w_i|) * ||w||_1 / T          (s, T, ||w||_1 constants)

Only this gradient matters. The authors' loss value, sum|w| * T / stopgrad(T) - sum|w|, is
identically 0; :func:`hypersparse_loss` returns the same value (exactly 0, so a logged total
loss CE + alpha * HS equals the authors'), and its autograd gradient is the closed form above.

Speed (the project target: a training step with HS costs <= 1.05x one without):
- a_k by an exact *bracketed selection*: a strided sample of |w| gives a narrow value bracket
  [lo, hi] around the k-th value; one pass counts |w| < lo and gathers the few |w| in
  [lo, hi]; ``torch.kthvalue`` on those gives a_k exactly. If the bracket misses (unlikely by
  construction) it is widened, then the full ``kthvalue`` is used. No sort, no N-sized copy.
- the gradient is computed in the forward pass (an autograd.Function), on CPU in chunks of
  2**20 elements through preallocated buffers (no page-faulting temporaries; big enough that
  the ~15 ops per chunk stay few, which matters when other processes share the cores), with
  sech^2(x) = 4 sigma(2x) (1 - sigma(2x)) and tanh(x) = 2 sigma(2x) - 1 (the sigmoid kernel
  is about twice as fast as tanh on CPU); backward is one in-place scaling per tensor.
Sums are per chunk in float32 (pairwise inside PyTorch) and accumulated in float64; at
N = 1e8 the gradient still matches a float64 reference to < 1e-5 (tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from hypersparse.masks import kth_smallest, target_zeros

HS_CONSTANT = 0.6585  # ~ artanh(1/sqrt(3)): sech^2(s|w|) has its inflection at |w| = a_k

_CPU_CHUNK = 1 << 20  # elements per CPU chunk: 4 MiB buffers stay in L3, and few ops
_SMALL_N = 1 << 18  # up to this many values a plain kthvalue is as fast as the bracket
_SAMPLE = 1 << 16  # target size of the strided sample that brackets a_k
_MARGINS_SD = (5.0, 40.0)  # bracket half-widths in standard deviations of the sample rank

__all__ = [
    "HS_CONSTANT",
    "REGULARIZERS",
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


def _chunks(values: Tensor) -> list[Tensor]:
    """Flat views of ``values`` sized for the cache on CPU; one piece on accelerators."""
    flat = values.detach().reshape(-1)
    if flat.device.type == "cpu" and flat.numel() > _CPU_CHUNK:
        return list(flat.split(_CPU_CHUNK))
    return [flat]


def _strided_abs_sample(chunks: Sequence[Tensor], stride: int) -> Tensor:
    """|v| at positions 0, stride, 2*stride, ... of the concatenation of ``chunks``."""
    parts, pos = [], 0
    for c in chunks:
        start = (-pos) % stride
        if start < c.numel():
            parts.append(c[start::stride])
        pos += c.numel()
    return torch.cat(parts).abs()


class _Scratch:
    """Reusable chunk-sized buffers, so the hot loops allocate nothing large.

    Fresh multi-megabyte allocations page-fault on every use (glibc hands them back to the
    OS), which made an ``abs`` over VGG-19's weights ~8x slower than the same op with
    ``out=``. Comparisons write float 0/1 masks: on CPU that is ~2.5x faster than a bool
    output, and a float sum of a chunk's mask is an exact count (chunks are < 2**24).
    """

    def __init__(self, chunks: Sequence[Tensor]) -> None:
        size = max(c.numel() for c in chunks)
        ref = chunks[0]
        self.f = [torch.empty(size, dtype=ref.dtype, device=ref.device) for _ in range(3)]
        self.m = torch.empty(size, dtype=torch.bool, device=ref.device)

    def buf(self, i: int, c: Tensor) -> Tensor:
        """Float buffer ``i`` cut to the size of chunk ``c``."""
        return self.f[i][: c.numel()]


def _bracket_count(
    chunks: Sequence[Tensor], lo: float, hi: float, scratch: _Scratch
) -> tuple[int, int, list]:
    """(#|v| < lo, #lo <= |v| <= hi, those values; empty list when lo == hi) in one pass."""
    at_least_lo, inside, cand = [], [], []
    for c in chunks:
        a = torch.abs(c, out=scratch.buf(0, c))
        ge = torch.ge(a, lo, out=scratch.buf(1, c))
        at_least_lo.append(ge.sum())
        ge.mul_(torch.le(a, hi, out=scratch.buf(2, c)))  # 1.0 where lo <= |v| <= hi
        if lo == hi:
            inside.append(ge.sum())
        else:
            mask = scratch.m[: c.numel()].copy_(ge)
            cand.append(a[mask])
    n = sum(c.numel() for c in chunks)
    n_lt = n - int(torch.stack(at_least_lo).double().sum())
    if lo == hi:
        n_in = int(torch.stack(inside).double().sum())
    else:
        n_in = sum(x.numel() for x in cand)
    return n_lt, n_in, cand


def _kth_abs_in_chunks(chunks: Sequence[Tensor], k: int, scratch: _Scratch | None = None) -> Tensor:
    """Exact k-th smallest (0-based) |v| over all chunks, as a 0-d tensor (see module doc)."""
    n = sum(c.numel() for c in chunks)
    if not 0 <= k < n:
        raise ValueError(f"k={k} out of range for {n} values")
    if n <= _SMALL_N or chunks[0].device.type != "cpu":
        # CUDA kthvalue is a radix select; small CPU inputs are fast enough as they are.
        return kth_smallest(torch.cat([c.abs() for c in chunks]), k)
    stride = max(1, n // _SAMPLE) | 1  # odd, so it rarely aligns with kernel/channel sizes
    sample = _strided_abs_sample(chunks, stride)
    scratch = scratch or _Scratch(chunks)
    m = sample.numel()
    q = (k + 0.5) / n
    centre = q * m
    sd = math.sqrt(m * q * (1.0 - q)) + 1.0
    for width in _MARGINS_SD:
        r_lo = int(math.floor(centre - width * sd)) - 2
        r_hi = int(math.ceil(centre + width * sd)) + 2
        lo = 0.0 if r_lo < 0 else float(torch.kthvalue(sample, r_lo + 1).values)
        hi = math.inf if r_hi >= m else float(torch.kthvalue(sample, r_hi + 1).values)
        n_lt, n_in, cand = _bracket_count(chunks, lo, hi, scratch)
        if n_lt <= k < n_lt + n_in:
            if lo == hi:
                return sample.new_tensor(lo)
            return kth_smallest(torch.cat(cand), k - n_lt)
    return kth_smallest(torch.cat([c.abs() for c in chunks]), k)  # pragma: no cover


def kth_smallest_abs(weights: Sequence[Tensor], k: int) -> Tensor:
    """Exact k-th smallest (0-based) |w| over all tensors, by bracketed selection (no sort)."""
    chunks = [c for w in weights for c in _chunks(w)]
    return _kth_abs_in_chunks(chunks, k)


def _scale_from_threshold(a_k: Tensor) -> Tensor:
    """s = 0.6585 / a_k, with a_k clamped to the smallest positive normal number.

    a_k = 0 means more than floor(kappa*N) weights are exactly 0 (the target sparsity is
    already met). The clamp keeps s finite (~5.6e37 in float32); then sech^2(s|w|) = 0 for
    every nonzero weight and sign(0) = 0 for the zeros, so the HS gradient is exactly 0, the
    limit s -> infinity of the formula.
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
    return _scale_from_threshold(_kth_abs_in_chunks(_chunks(flat_abs_w), k))


@torch.no_grad()
def _hs_direction(weights: Sequence[Tensor], prune_rate: float) -> tuple[list[Tensor], Tensor]:
    """(h_i, c): the HS gradient is c * h_i, h_i = sign(w) sig(2s|w|)(1 - sig(2s|w|)).

    c = 4 s ||w||_1 / T. One pass for a_k, one fused (chunked) pass for ||w||_1, T and h.
    """
    _check_rate(prune_rate)
    if len(weights) == 0:
        raise ValueError("hypersparse regularizer needs at least one weight tensor")
    pieces = [_chunks(w) for w in weights]
    flat_chunks = [c for ps in pieces for c in ps]
    n = sum(c.numel() for c in flat_chunks)
    if n == 0:
        raise ValueError("hypersparse regularizer needs at least one weight")
    k = min(target_zeros(prune_rate, n), n - 1)
    scratch = _Scratch(flat_chunks)
    s_t = _scale_from_threshold(_kth_abs_in_chunks(flat_chunks, k, scratch))
    on_cpu = s_t.device.type == "cpu"
    two_s: float | Tensor = 2.0 * float(s_t) if on_cpu else 2.0 * s_t
    l1_parts, p_parts, hs = [], [], []
    for w, ps in zip(weights, pieces, strict=True):
        h = torch.empty(w.shape, dtype=w.dtype, device=w.device)
        for c, hc in zip(ps, _chunks(h), strict=True):
            a = torch.abs(c, out=scratch.buf(0, c))
            l1_parts.append(a.sum())
            p = a.mul_(two_s).sigmoid_()  # p = sigma(2 s |w|), in place
            p_parts.append(p.sum())
            q = torch.sign(c, out=scratch.buf(1, c)).mul_(p)  # sign(w) p
            torch.addcmul(q, q, p, value=-1.0, out=hc)  # sign(w) p (1 - p) = sign sech^2 / 4
        hs.append(h)
    l1 = torch.stack(l1_parts).double().sum()
    t = 2.0 * torch.stack(p_parts).double().sum() - n  # T = sum tanh = sum (2p - 1)
    # T = 0 only when every weight is 0; then every h is 0 too, and c = 0 keeps it finite.
    c = torch.where(t > 0, 4.0 * s_t.double() * l1 / t.clamp_min(1e-300), torch.zeros_like(t))
    fmax = torch.finfo(hs[0].dtype).max
    return hs, c.clamp_max(fmax).to(hs[0].dtype)


class _HyperSparseFunction(torch.autograd.Function):
    """Value 0; gradient c * h_i computed in the forward pass, scaled in place in backward."""

    @staticmethod
    def forward(ctx, prune_rate: float, *weights: Tensor) -> Tensor:  # type: ignore[override]
        hs, c = _hs_direction(weights, prune_rate)
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
    hs, c = _hs_direction(weights, prune_rate)
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
