"""Exact k-th smallest |w| over many tensors without sorting: the HyperSparse threshold a_k.

a_k (the floor(kappa*N)-th smallest |w|) is needed every ART step; the authors sort all N
weights for it. Here it comes from a *bracket* [lo, hi] that holds a_k:

1. One pass over |w| counts, per block of ``BLOCK`` values, how many are < lo and <= hi
   (two float comparisons and two block sums per cache-sized chunk, no boolean masks).
2. If #(< lo) <= k < #(<= hi), a_k is the (k - #(< lo))-th smallest value in [lo, hi]; only
   blocks holding such values are gathered, and ``torch.kthvalue`` runs on those few.
3. Otherwise the bracket is widened, and as a last resort the plain ``kthvalue`` runs on all.

The bracket comes from a strided sample of |w| (quantile +- a few standard deviations of the
sample rank), or, inside training, from the previous step's a_k +- a relative margin (weights
move little per step, so that bracket holds ~1e-4 of the values). Either way the result is
the exact order statistic: the bracket only decides how much work finding it takes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from hypersparse.select import kth_smallest, radix_kth_of

__all__ = [
    "BLOCK",
    "BracketCount",
    "Scratch",
    "cpu_chunks",
    "kth_abs_of_chunks",
    "kth_smallest_abs",
    "sampled_brackets",
]

CPU_CHUNK = 1 << 20  # elements per CPU chunk: 4 MiB buffers stay in cache across several ops
BLOCK = 256  # values per counted block; candidate blocks are gathered whole
SMALL_N = 1 << 18  # up to this many values a plain kthvalue is as fast as the bracket
SAMPLE = 1 << 16  # target size of the strided sample that brackets a_k
MARGINS_SD = (5.0, 40.0)  # sample bracket half-widths, in standard deviations of the rank


def cpu_chunks(values: Tensor) -> list[Tensor]:
    """Flat views of a contiguous CPU tensor in cache-sized pieces; the whole tensor otherwise.

    Non-contiguous tensors (e.g. channels_last weights on CUDA) stay whole and unflattened, so
    elementwise ops on them and on buffers made by ``empty_like`` line up element for element.
    """
    v = values.detach()
    if v.device.type == "cpu" and v.is_contiguous():
        flat = v.view(-1)
        return list(flat.split(CPU_CHUNK)) if flat.numel() > CPU_CHUNK else [flat]
    return [v]


class Scratch:
    """Reusable chunk-sized float buffers, so the hot loops allocate nothing large.

    Fresh multi-megabyte allocations page-fault on every use (glibc hands them back to the
    OS), which made an ``abs`` over VGG-19's weights ~8x slower than the same op with
    ``out=``. Comparisons write float 0/1: on CPU that is ~2x faster than a bool output, and
    float sums of them are exact counts (a block or chunk holds < 2**24 values).
    """

    def __init__(self, chunks: Sequence[Tensor], count: int = 3) -> None:
        size = max(c.numel() for c in chunks)
        ref = chunks[0]
        self.f = [torch.empty(size, dtype=ref.dtype, device=ref.device) for _ in range(count)]

    def buf(self, i: int, c: Tensor) -> Tensor:
        """Float buffer ``i`` shaped like chunk ``c`` (which must be flat or contiguous)."""
        return self.f[i][: c.numel()].view(c.shape)


def _block_sums(m: Tensor) -> Tensor:
    """Sums of a flat 0/1 tensor over consecutive blocks of BLOCK (the last one may be short)."""
    n = m.numel()
    full = n // BLOCK * BLOCK
    parts = [m[:full].view(-1, BLOCK).sum(1)] if full else []
    if full < n:
        parts.append(m[full:].sum().reshape(1))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class BracketCount:
    """Per-block counts of |w| < lo and |w| <= hi over a sequence of |w| chunks.

    Feed every chunk of |w| to :meth:`add` (inside any other pass over the weights), then
    :meth:`kth` gives the exact k-th smallest value, or None when [lo, hi] does not hold it.
    """

    def __init__(self, lo: float, hi: float, scratch: Scratch) -> None:
        self.lo, self.hi = float(lo), float(hi)
        self.scratch = scratch
        self.lt: list[Tensor] = []
        self.inside: list[Tensor] = []

    def add(self, a: Tensor) -> None:
        """Count one flat chunk of |w| (values >= 0)."""
        lt = torch.lt(a, self.lo, out=self.scratch.buf(1, a))
        le = torch.le(a, self.hi, out=self.scratch.buf(2, a))
        lt_blocks = _block_sums(lt)
        self.lt.append(lt_blocks)
        self.inside.append(_block_sums(le).sub_(lt_blocks))

    def kth(self, chunks: Sequence[Tensor], k: int) -> Tensor | None:
        """Exact k-th smallest (0-based) of the counted ``chunks``, or None if outside [lo, hi]."""
        n_lt = int(torch.cat(self.lt).double().sum())
        n_in = int(torch.cat(self.inside).double().sum())
        if not n_lt <= k < n_lt + n_in:
            return None
        if self.lo == self.hi:
            return chunks[0].new_tensor(self.lo)
        cand = []
        for a, inside in zip(chunks, self.inside, strict=True):
            idx = inside.nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            full = a.numel() // BLOCK
            sel = idx[idx < full]
            parts = [a[: full * BLOCK].view(-1, BLOCK).index_select(0, sel).view(-1)]
            if sel.numel() < idx.numel():  # the short last block
                parts.append(a[full * BLOCK :])
            vals = torch.cat(parts) if len(parts) > 1 else parts[0]
            cand.append(vals[(vals >= self.lo) & (vals <= self.hi)])
        return kth_smallest(torch.cat(cand), k - n_lt)


def _strided_abs_sample(chunks: Sequence[Tensor], stride: int) -> Tensor:
    """|v| at positions 0, stride, 2*stride, ... of the concatenation of ``chunks``."""
    parts, pos = [], 0
    for c in chunks:
        start = (-pos) % stride
        if start < c.numel():
            parts.append(c[start::stride])
        pos += c.numel()
    return torch.cat(parts).abs()


def sampled_brackets(chunks: Sequence[Tensor], k: int) -> list[tuple[float, float]]:
    """Brackets [lo, hi] around the k-th smallest |v|, narrow then wide, from a strided sample."""
    n = sum(c.numel() for c in chunks)
    stride = max(1, n // SAMPLE) | 1  # odd, so it rarely aligns with kernel/channel sizes
    sample = _strided_abs_sample(chunks, stride)
    m = sample.numel()
    q = (k + 0.5) / n
    centre = q * m
    sd = math.sqrt(m * q * (1.0 - q)) + 1.0
    out = []
    for width in MARGINS_SD:
        r_lo = int(math.floor(centre - width * sd)) - 2
        r_hi = int(math.ceil(centre + width * sd)) + 2
        lo = 0.0 if r_lo < 0 else float(torch.kthvalue(sample, r_lo + 1).values)
        hi = math.inf if r_hi >= m else float(torch.kthvalue(sample, r_hi + 1).values)
        out.append((lo, hi))
    return out


def kth_abs_of_chunks(
    abs_chunks: Sequence[Tensor],
    k: int,
    brackets: Iterable[tuple[float, float]],
    scratch: Scratch,
    first: BracketCount | None = None,
) -> tuple[Tensor, bool]:
    """(exact k-th smallest (0-based) over flat chunks of |w|, whether brackets[0] held it).

    The brackets (any iterable, consumed lazily) are tried in turn, then a plain selection
    over everything. ``first`` is a count for the first bracket already made during another
    pass over the chunks.
    """
    n = sum(c.numel() for c in abs_chunks)
    if not 0 <= k < n:
        raise ValueError(f"k={k} out of range for {n} values")
    for i, (lo, hi) in enumerate(brackets):
        count = first if i == 0 and first is not None else None
        if count is None:
            count = BracketCount(lo, hi, scratch)
            for a in abs_chunks:
                count.add(a)
        found = count.kth(abs_chunks, k)
        if found is not None:
            return found, i == 0
    return kth_smallest(torch.cat([c.reshape(-1) for c in abs_chunks]), k), False


def kth_smallest_abs(weights: Sequence[Tensor], k: int) -> Tensor:
    """Exact k-th smallest (0-based) |w| over all tensors, by bracketed selection (no sort)."""
    chunks = [c for w in weights for c in cpu_chunks(w)]
    n = sum(c.numel() for c in chunks)  # both paths below check 0 <= k < n
    abs_chunks = [c.abs().reshape(-1) for c in chunks]
    if abs_chunks[0].device.type != "cpu" and abs_chunks[0].dtype == torch.float32:
        return radix_kth_of(abs_chunks, k)  # exact, on the device, no host sync
    if n <= SMALL_N:  # small inputs: a plain selection is as fast
        return kth_smallest(torch.cat(abs_chunks), k)
    brackets = sampled_brackets(chunks, k)
    return kth_abs_of_chunks(abs_chunks, k, brackets, Scratch(abs_chunks))[0]
