"""Regularizers: HyperSparse gradient against a float64 sort-based reference, L1 and L2."""

from __future__ import annotations

import math

import pytest
import torch

import hypersparse.hs_select as S
import hypersparse.regularizers as R
from hypersparse.regularizers import (
    HS_CONSTANT,
    REGULARIZERS,
    hs_threshold_scale,
    hypersparse_grad,
    hypersparse_loss,
    kth_smallest_abs,
    l1_loss,
    l2_loss,
)


def ref_grad(weights: list[torch.Tensor], rate: float) -> tuple[torch.Tensor, float, float]:
    """Float64 closed form with a_k from a full sort: (flat gradient, s, s*||w||_1/T)."""
    flat = torch.cat([w.detach().reshape(-1) for w in weights]).double()
    a = flat.abs()
    a_k = torch.sort(a).values[math.floor(rate * flat.numel())]
    if a_k == 0:  # the documented limit: target sparsity met, gradient exactly 0
        return torch.zeros_like(flat), math.inf, 0.0
    s = HS_CONSTANT / a_k
    t = torch.tanh(s * a).sum()
    g = torch.sign(flat) * s / torch.cosh(s * a) ** 2 * a.sum() / t
    return g, float(s), float(s * a.sum() / t)


def autograd_grad(weights: list[torch.Tensor], rate: float) -> torch.Tensor:
    """Flat gradient of hypersparse_loss by autograd (on leaf copies)."""
    leaves = [w.detach().clone().requires_grad_() for w in weights]
    hypersparse_loss(leaves, rate).backward()
    return torch.cat([w.grad.reshape(-1) for w in leaves]).double()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Max-norm relative error."""
    return float((got - ref).abs().max() / ref.abs().max())


def weights_with_ties(seed: int, scale: int = 1) -> list[torch.Tensor]:
    """Several tensors of different shapes with exact ties and exact zeros."""
    g = torch.Generator().manual_seed(seed)
    ws = [
        torch.randn(16 * scale, 3, 3, 3, generator=g) * 0.2,
        torch.randn(32 * scale, 16, 3, 3, generator=g) * 0.05,
        torch.randn(10, 32 * scale, generator=g) * 0.01,
        torch.randn(64, 64, 1, 1, generator=g) * 0.1,
    ]
    ws[1].view(-1)[1::7] = ws[1].view(-1)[2]  # ties
    ws[1].view(-1)[::5] = 0.0  # zeros
    ws[3].view(-1)[::3] = -ws[3].view(-1)[1]  # ties of opposite sign
    return ws


@pytest.fixture(params=["default", "small_chunks"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the default sizes and with tiny chunks, sample and plain-select limit,
    so that small inputs exercise the chunked, bracketed code path too."""
    if request.param == "small_chunks":
        monkeypatch.setattr(S, "CPU_CHUNK", 4096)
        monkeypatch.setattr(S, "SMALL_N", 500)
        monkeypatch.setattr(S, "SAMPLE", 256)
    return request.param


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9, 0.98, 0.995])
@pytest.mark.parametrize("scale", [1, 16])
def test_autograd_gradient_matches_closed_form(rate: float, scale: int, chunking: str) -> None:
    ws = weights_with_ties(0, scale)
    if rate == 0.0:  # a_k would be one of the exact zeros; use the smallest nonzero instead
        ws[1].view(-1)[::5] = 1e-3
    ref, _, _ = ref_grad(ws, rate)
    assert rel_err(autograd_grad(ws, rate), ref) < 1e-5
    closed = torch.cat([g.reshape(-1) for g in hypersparse_grad(ws, rate)]).double()
    assert rel_err(closed, ref) < 1e-5


def test_zero_weights_get_zero_gradient_and_value_is_zero() -> None:
    ws = [w.requires_grad_() for w in weights_with_ties(1)]
    loss = hypersparse_loss(ws, 0.9)
    assert loss.item() == 0.0 and loss.requires_grad and loss.dim() == 0
    loss.backward()
    assert torch.all(ws[1].grad.view(-1)[::5] == 0)


def test_invariant_to_weight_order(chunking: str) -> None:
    ws = weights_with_ties(2)
    perm = [2, 0, 3, 1]
    g = hypersparse_grad(ws, 0.9)
    g_perm = hypersparse_grad([ws[i] for i in perm], 0.9)
    for j, i in enumerate(perm):
        torch.testing.assert_close(g_perm[j], g[i], rtol=1e-6, atol=0.0)


def test_small_weights_act_like_l1() -> None:
    """For s|w| << 1 the gradient is sign(w) * s * ||w||_1 / T, and that factor is ~1."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(20000, generator=g) * 10 ** (-4 * torch.rand(20000, generator=g))
    grad = hypersparse_grad([w], 0.99)[0].double()
    ref, s, factor = ref_grad([w], 0.99)
    assert 1.0 <= factor < 1.5
    small = w.abs() * s < 1e-3
    assert small.sum() > 1000
    ratio = grad[small] / (torch.sign(w[small]).double() * factor)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=2e-6)


def test_gradient_vanishes_far_above_threshold() -> None:
    w = torch.randn(1000) * 0.01
    a_k = kth_smallest_abs([w], 900).item()
    w[:10] = 25 * a_k
    w[10:20] = -25 * a_k
    assert w[:20].abs().min() >= 20 * kth_smallest_abs([w], 900).item()
    grad = hypersparse_grad([w], 0.9)[0]
    assert (grad[:20].abs().max() / grad.abs().max()).item() < 1e-6
    assert torch.all(torch.sign(grad[20:]) == torch.sign(w[20:]))


@pytest.mark.parametrize("n", [1000, 300_000, 600_001])
def test_threshold_equals_sort_reference_with_ties(n: int, chunking: str) -> None:
    g = torch.Generator().manual_seed(n)
    cases = {
        "gauss": torch.randn(n, generator=g),
        "ties": torch.randint(-50, 50, (n,), generator=g).float() * 0.01,
        "sorted": torch.linspace(-1, 1, n),
        "mostly_zero": torch.where(torch.rand(n, generator=g) < 0.95, 0.0, torch.randn(n)),
        "periodic": torch.arange(n).remainder(97).float(),
    }
    for name, v in cases.items():
        srt = torch.sort(v.abs()).values
        for rate in [0.0, 0.5, 0.9, 0.995, 0.999999]:
            k = math.floor(rate * n)
            assert torch.equal(kth_smallest_abs([v], k), srt[k]), (name, rate)
            expected = HS_CONSTANT / srt[k].clamp_min(torch.finfo(torch.float32).tiny)
            assert torch.equal(hs_threshold_scale(v.abs(), rate), expected), (name, rate)


def test_bracket_path_is_taken_without_full_selection(
    chunking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With N above the plain-select limit, a_k comes from the bracket, not a full kthvalue."""
    calls: dict[str, list[int]] = {"bracket": [], "select": []}
    real_init, real_select = S.BracketCount.__init__, S.kth_smallest

    def bracket(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["bracket"].append(1)
        real_init(self, *args, **kwargs)

    def select(values: torch.Tensor, k: int) -> torch.Tensor:
        calls["select"].append(values.numel())
        return real_select(values, k)

    monkeypatch.setattr(S.BracketCount, "__init__", bracket)
    monkeypatch.setattr(S, "kth_smallest", select)
    monkeypatch.setattr(R, "kth_smallest", select)
    w = torch.randn(400_000)
    g = hypersparse_grad([w], 0.9)[0]
    assert torch.isfinite(g).all()
    assert len(calls["bracket"]) == 1
    limit = w.numel() // (50 if chunking == "default" else 2)  # the tiny sample is coarse
    assert max(calls["select"]) < limit  # only the candidates were selected from


def test_threshold_over_several_tensors_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = weights_with_ties(4, scale=16)
    flat = torch.cat([w.reshape(-1) for w in ws]).abs()
    srt = torch.sort(flat).values
    k = math.floor(0.9 * flat.numel())
    assert torch.equal(kth_smallest_abs(ws, k), srt[k])
    # A zero-width bracket can never hold a_k of distinct values: the widening and then the
    # full-selection fallback must still give the exact value.
    monkeypatch.setattr(S, "MARGINS_SD", (0.0,))
    monkeypatch.setattr(S, "SAMPLE", 8)
    assert torch.equal(kth_smallest_abs(ws, k), srt[k])


def test_all_zero_layer_and_all_zero_weights_are_finite(chunking: str) -> None:
    ws = weights_with_ties(5)
    ws[2] = torch.zeros_like(ws[2])
    g = autograd_grad(ws, 0.9)
    start = ws[0].numel() + ws[1].numel()
    assert torch.isfinite(g).all() and torch.all(g[start : start + ws[2].numel()] == 0)
    ref, _, _ = ref_grad(ws, 0.9)
    assert rel_err(g, ref) < 1e-5
    zeros = [torch.zeros(10, 10), torch.zeros(3, 3, 3, 3)]
    for rate in [0.0, 0.5, 0.99]:
        g = autograd_grad(zeros, rate)
        assert torch.all(g == 0)
        assert torch.isfinite(hs_threshold_scale(torch.zeros(100), rate))


def test_threshold_zero_gives_zero_gradient() -> None:
    """More than floor(kappa*N) exact zeros: a_k = 0, target met, every gradient is 0."""
    w = torch.randn(1000)
    w[:950] = 0.0
    g = autograd_grad([w], 0.9)
    assert torch.isfinite(g).all() and torch.all(g == 0)


def test_large_n_sums_are_accurate() -> None:
    """10^7 weights (10^8 is in the slow test): gradient vs float64 reference at a sample."""
    g = torch.Generator().manual_seed(6)
    w = torch.randn(10_000_000, generator=g) * 0.02
    grad = hypersparse_grad([w], 0.98)[0]
    a = w.double().abs()
    k = math.floor(0.98 * w.numel())
    a_k = float(torch.kthvalue(w.abs(), k + 1).values)
    s = HS_CONSTANT / a_k
    factor = s * float(a.sum()) / float(torch.tanh(s * a).sum())
    idx = torch.arange(0, w.numel(), 9973)
    ref = torch.sign(w[idx].double()) * factor / torch.cosh(s * a[idx]) ** 2
    assert rel_err(grad[idx].double(), ref) < 1e-5


@pytest.mark.slow
def test_1e8_weights() -> None:
    """10^8 weights in float32: exact threshold, finite gradient, accurate scale."""
    n = 100_000_000
    w = torch.randn(n, generator=torch.Generator().manual_seed(7)) * 0.02
    k = math.floor(0.9 * n)
    a_k = torch.kthvalue(w.abs(), k + 1).values
    assert torch.equal(kth_smallest_abs([w], k), a_k)
    grad = hypersparse_grad([w], 0.9)[0]
    assert torch.isfinite(grad).all()
    s = HS_CONSTANT / float(a_k)
    l1 = sum(float(c.double().abs().sum()) for c in w.split(1 << 22))
    t = sum(float(torch.tanh(s * c.double().abs()).sum()) for c in w.split(1 << 22))
    head = w[:100_000].double()
    ref = torch.sign(head) * s / torch.cosh(s * head.abs()) ** 2 * l1 / t
    assert rel_err(grad[:100_000].double(), ref) < 1e-5


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_prune_rate_raises(rate: float) -> None:
    w = [torch.randn(10, 10, requires_grad=True)]
    with pytest.raises(ValueError, match="prune_rate"):
        hypersparse_loss(w, rate)
    with pytest.raises(ValueError, match="prune_rate"):
        hypersparse_grad(w, rate)
    with pytest.raises(ValueError, match="prune_rate"):
        hs_threshold_scale(w[0].detach().abs().reshape(-1), rate)


def test_second_backward_raises_clearly() -> None:
    w = torch.randn(20, 20, requires_grad=True)
    loss = hypersparse_loss([w], 0.5) * 2.0
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_grad_out_scaling_and_combination_with_ce() -> None:
    ws = weights_with_ties(8)
    ref, _, _ = ref_grad(ws, 0.9)
    leaves = [w.clone().requires_grad_() for w in ws]
    (-3.0 * hypersparse_loss(leaves, 0.9) + l1_loss(leaves)).backward()
    got = torch.cat([w.grad.reshape(-1) for w in leaves]).double()
    flat = torch.cat([w.reshape(-1) for w in ws]).double()
    assert rel_err(got, -3.0 * ref + torch.sign(flat)) < 1e-5


def test_l1_l2_values_and_gradients() -> None:
    ws = [torch.randn(4, 3, requires_grad=True), torch.randn(2, 2, 3, 3, requires_grad=True)]
    flat = torch.cat([w.detach().reshape(-1) for w in ws])
    l1 = l1_loss(ws)
    torch.testing.assert_close(l1, flat.abs().sum())
    l1.backward()
    for w in ws:
        torch.testing.assert_close(w.grad, torch.sign(w.detach()))
        w.grad = None
    l2 = l2_loss(ws)
    torch.testing.assert_close(l2, (flat**2).sum())
    l2.backward()
    for w in ws:
        torch.testing.assert_close(w.grad, 2 * w.detach())


def test_registry() -> None:
    assert set(REGULARIZERS) == {"hs", "l1", "l2"}
    ws = weights_with_ties(9)
    torch.testing.assert_close(REGULARIZERS["l1"](ws, 0.9), l1_loss(ws))
    torch.testing.assert_close(REGULARIZERS["l2"](ws, 0.3), l2_loss(ws))
    assert REGULARIZERS["hs"](ws, 0.9).item() == 0.0


# ------------------------------------------------------------ HyperSparseGradient (training)
def _fresh_grad(ws: list[torch.Tensor], rate: float) -> list[torch.Tensor]:
    return hypersparse_grad([w.detach() for w in ws], rate)


def test_training_gradient_over_steps_equals_the_closed_form(
    chunking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across drifting steps (previous-a_k brackets), jumps (bracket misses) and a changed
    weight list (buffers rebuilt), w.grad gains exactly alpha * the fresh closed form."""
    selected: list[int] = []
    real_select = S.kth_smallest

    def select(values: torch.Tensor, k: int) -> torch.Tensor:
        selected.append(values.numel())
        return real_select(values, k)

    monkeypatch.setattr(S, "kth_smallest", select)
    g = torch.Generator().manual_seed(11)
    ws = [torch.randn(300, 500, generator=g) * 0.05, torch.randn(200_000, generator=g) * 0.01]
    ws = [w.requires_grad_() for w in ws]
    n = sum(w.numel() for w in ws)
    hs = R.HyperSparseGradient()
    alpha = 0.37
    for step in range(8):
        base = [torch.randn(w.shape, generator=g) for w in ws]
        for w, b in zip(ws, base, strict=True):
            w.grad = b.clone()
        want = _fresh_grad(ws, 0.9)
        selected.clear()
        misses = hs.bracket_misses
        hs.add_to_grads_(ws, 0.9, alpha)
        if step == 5:  # the doubling after step 4 left the previous-a_k bracket
            assert hs.bracket_misses == misses + 1
        elif step >= 2:
            assert hs.bracket_misses == misses, step
        for w, b, r in zip(ws, base, want, strict=True):
            torch.testing.assert_close(w.grad, b + alpha * r, rtol=1e-6, atol=3e-7)
        if step in (2, 3, 4):  # drifted steps: only a sliver of |w| was selected from
            assert max(selected) < n // 100, (step, selected)
        elif step > 5:  # after the jump the margin is wide, then narrows again
            assert max(selected) < n // 10, (step, selected)
        with torch.no_grad():
            for w in ws:
                w.mul_(2.0 if step == 4 else 1.0 - 1e-3 * torch.rand((), generator=g))
    other = [torch.randn(70_000, generator=g).requires_grad_()]
    hs.add_to_grads_(other, 0.5, 1.0)
    torch.testing.assert_close(other[0].grad, _fresh_grad(other, 0.5)[0], rtol=1e-6, atol=0)


def test_training_gradient_edge_cases() -> None:
    w = torch.randn(1000, requires_grad=True)
    hs = R.HyperSparseGradient()
    hs.add_to_grads_([w], 0.9, 0.0)  # alpha 0: nothing to add
    assert w.grad is None
    hs.add_to_grads_([w], 0.9, 1.0)  # a missing grad counts as zero
    torch.testing.assert_close(w.grad, _fresh_grad([w], 0.9)[0], rtol=1e-6, atol=0)
    with torch.no_grad():
        w[:950] = 0.0  # a_k = 0: target met, the HS gradient is exactly 0
    w.grad = torch.ones_like(w)
    hs.add_to_grads_([w], 0.9, 5.0)
    assert torch.all(w.grad == 1.0)
    with pytest.raises(ValueError, match="prune_rate"):
        hs.add_to_grads_([w], 1.0, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        hs.add_to_grads_([], 0.9, 1.0)
