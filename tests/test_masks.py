"""The one place that knows 'prunable': exact counts, deterministic ties, sparsity reports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hypersparse import masks as M


def test_prunable_are_conv_and_linear_weights_only():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, bias=True), nn.BatchNorm2d(2), nn.Flatten(),
                        nn.Linear(8, 3))
    names = [n for n, _ in M.prunable_named_weights(net)]
    assert names == ["0.weight", "3.weight"]
    assert [k for k, _ in M.prunable_state_items(net.state_dict())] == names
    assert M.num_prunable(net) == 2 * 9 + 24


def test_target_zeros_is_floor_and_refuses_kappa_one():
    assert M.target_zeros(0.9, 1000) == 900 and M.target_zeros(0.998, 1001) == 998
    assert M.target_zeros(0.0, 10) == 0
    for bad in (1.0, -0.1):
        try:
            M.target_zeros(bad, 10)
        except ValueError as exc:
            assert "[0, 1)" in str(exc)
        else:
            raise AssertionError("kappa outside [0, 1) accepted")


def test_topk_masks_exact_with_ties_and_matches_stable_sort():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (50,), generator=g).float()  # many ties
    b = torch.zeros(7, 3)
    for keep in (0, 1, 13, 40, 71):
        masks = M.topk_masks_from_scores([("a", a), ("b", b)], keep)
        flat = torch.cat([masks["a"].flatten(), masks["b"].flatten()])
        assert int(flat.sum()) == keep
        order = torch.sort(torch.cat([a, b.flatten()]), descending=True, stable=True).indices
        ref = torch.zeros(71, dtype=torch.bool)
        ref[order[:keep]] = True
        assert torch.equal(flat, ref)  # ties broken by position: earlier wins


def test_magnitude_masks_and_sparsity_report():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    masks = M.model_masks_by_magnitude(net, 0.95)
    M.apply_masks(net, masks)
    rep = M.sparsity_report(net.state_dict())
    assert rep["num_zero"] == M.target_zeros(0.95, rep["num_prunable"])
    kept = torch.cat([w[masks[k]].abs() for k, w in M.prunable_named_weights(net)])
    pruned = torch.cat([w.detach()[~masks[k]] for k, w in M.prunable_named_weights(net)])
    assert torch.all(pruned == 0) and kept.min() > 0
    assert set(rep["layer_density"]) == {"0.weight", "2.weight"}


def test_disconnected_layer_is_reported():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.zero_()
    assert M.sparsity_report(net.state_dict())["disconnected_layers"] == ["1.weight"]


def test_masks_are_applied_in_place_without_allocations() -> None:
    """Weights, grads and momentum are masked through torch.where(out=): no float copy of
    the bool mask (w.mul_(mask) makes one on CPU), nothing allocated at all."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 400), nn.Linear(400, 10))
    masks = M.model_masks_by_magnitude(model, 0.9)
    model(torch.randn(4, 300)).sum().backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        M.apply_masks(model, masks)
        M.mask_gradients(model, masks)
        M.zero_momentum(opt, model, masks)
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.key_averages())
    assert allocated < 1024, allocated  # 0-d zeros at most; the masks alone are 120 kB
    for name, w in M.prunable_named_weights(model):
        keep = masks[name]
        assert torch.all(w[~keep] == 0) and torch.all(w.grad[~keep] == 0)
        assert torch.all(opt.state[w]["momentum_buffer"][~keep] == 0)
        assert torch.all(w[keep] != 0)
    with pytest.raises(TypeError, match="bool"):
        M.zero_where_masked_(torch.ones(3), torch.ones(3))
