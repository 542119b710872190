"""RigL: ERK densities, cosine drop fraction, drop/grow updates, constant per-layer density."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hypersparse import masks as M
from hypersparse.engine import Phase
from hypersparse.io import safe_torch_load
from hypersparse.methods import build_params
from hypersparse.methods.rigl import (
    RigL,
    RigLHooks,
    RigLParams,
    drop_fraction,
    drop_grow,
    layer_keep_counts,
    update_steps,
)
from hypersparse.models import build_model
from hypersparse.runner import execute

SHAPES = [("a", (4, 2, 3, 3)), ("b", (8, 4, 3, 3)), ("c", (10, 9))]  # 72, 288, 90 weights


def test_erk_counts_by_hand() -> None:
    # raw density sum(shape)/prod(shape): 12/72, 18/288, 19/90 -> raw*size = 12, 18, 19
    # keep 100: eps = 100/49, real counts 24.49, 36.73, 38.78 -> floors 24, 36, 38 (98);
    # the 2 left go to the largest remainders, c (.78) then b (.73)
    assert layer_keep_counts(SHAPES, 100) == {"a": 24, "b": 37, "c": 39}


def test_erk_caps_dense_layers_and_redistributes() -> None:
    # keep 300: eps = 300/49 gives c 1.29 and a 1.02 -> both dense; b gets the 138 left
    assert layer_keep_counts(SHAPES, 300) == {"a": 72, "b": 138, "c": 90}
    assert layer_keep_counts(SHAPES, 100, dense={"a"})["a"] == 72
    assert layer_keep_counts(SHAPES, 450) == {"a": 72, "b": 288, "c": 90}
    uni = layer_keep_counts(SHAPES, 45, distribution="uniform")
    assert uni == {"a": 7, "b": 29, "c": 9}  # 10% each: 7.2, 28.8, 9.0 -> one extra to b


@pytest.mark.parametrize("kappa", [0.5, 0.9, 0.98, 0.998])
def test_erk_exact_total_on_resnet32(kappa: float) -> None:
    named = M.prunable_named_weights(build_model("resnet32", 10))
    n = sum(w.numel() for _, w in named)
    keep = n - M.target_zeros(kappa, n)
    counts = layer_keep_counts([(k, tuple(w.shape)) for k, w in named], keep)
    assert sum(counts.values()) == keep
    assert all(0 <= counts[k] <= w.numel() for k, w in named)


def test_drop_fraction_cosine() -> None:
    assert drop_fraction(0, 0.3, 1000) == pytest.approx(0.3)
    assert drop_fraction(500, 0.3, 1000) == pytest.approx(0.15)
    assert drop_fraction(250, 0.3, 1000) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert drop_fraction(1000, 0.3, 1000) == pytest.approx(0.0)


def test_drop_grow_by_hand() -> None:
    w = torch.tensor([0.0, 5.0, 0.1, 0.0, 3.0, 0.0, 0.0, 2.0])
    mask = w != 0  # 4 active
    grad = torch.tensor([9.0, 0.0, 8.0, 1.0, 0.0, 7.0, 2.0, 0.0])
    new, grown = drop_grow(w, grad, mask, 0.5, "w")  # drop 2 (0.1 and 2.0), grow 2
    # the largest |grad| outside the survivors: index 0 (9) and index 2 (8, just dropped,
    # so it keeps its value and is not a new connection)
    assert new.tolist() == [True, True, True, False, True, False, False, False]
    assert grown.tolist() == [True] + [False] * 7
    assert int(new.sum()) == int(mask.sum())


def _loop(model: nn.Module, hooks: RigLHooks, steps: int, opt: torch.optim.Optimizer) -> list:
    """Run ``steps`` iterations calling the hooks like the engine does; record each update."""
    tr = SimpleNamespace(model=model, optimizer=opt, step=0, device=torch.device("cpu"),
                         phase=Phase("rigl", 1, 0.1), train_loader=range(steps))
    hooks.on_phase_start(tr)
    x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
    events = []
    for it in range(steps):
        tr.step = it
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = {k: w.grad.abs().clone() for k, w in M.prunable_named_weights(model)}
        before = {k: m.clone() for k, m in hooks.masks.items()}
        weights = {k: w.detach().clone() for k, w in M.prunable_named_weights(model)}
        if hooks.replace_step(tr):
            events.append((it, before, {k: m.clone() for k, m in hooks.masks.items()}, grads,
                           weights))
        else:
            hooks.before_step(tr)
            opt.step()
            hooks.after_step(tr)
        hooks.after_iteration(tr)
    return events


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))


def test_update_iterations_follow_the_reference_rule() -> None:
    """google-research/rigl: update when t <= T_end and last + dt <= t (last starts at -dt),
    t = SGD steps taken; an update iteration takes no SGD step, so t does not advance."""
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dt, iterations = 3, 36
    hooks = RigLHooks(RigLParams(delta_t=dt, end_frac=0.5, dense_first_layer=False))
    hooks.masks = RigL(SimpleNamespace(kappa=0.8, seed=0), hooks.p).initial_masks(model)
    events = _loop(model, hooks, iterations, opt)
    t_end = int(0.5 * iterations)  # 18
    ts = list(range(0, t_end + 1, dt))  # 0, 3, ..., 18: T_end included
    assert update_steps(dt, t_end) == ts
    # the j-th update happens after j*dt SGD steps and j update iterations
    assert [it for it, *_ in events] == [t + j for j, t in enumerate(ts)]
    assert hooks.updates == len(ts) and hooks.sgd_steps == iterations - len(ts)


def test_update_replaces_the_sgd_step() -> None:
    torch.manual_seed(2)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    hooks = RigLHooks(RigLParams(delta_t=100, dense_first_layer=False))
    hooks.masks = RigL(SimpleNamespace(kappa=0.8, seed=0), hooks.p).initial_masks(model)
    tr = SimpleNamespace(model=model, optimizer=opt, step=0, device=torch.device("cpu"),
                         phase=Phase("rigl", 1, 0.1), train_loader=range(10))
    hooks.on_phase_start(tr)
    before = {k: w.detach().clone() for k, w in M.prunable_named_weights(model)}
    old = {k: m.clone() for k, m in hooks.masks.items()}
    nn.functional.cross_entropy(model(torch.randn(8, 12)), torch.randint(0, 3, (8,))).backward()
    assert hooks.replace_step(tr)  # t = 0: the first update, before any SGD step
    for k, w in M.prunable_named_weights(model):
        stay = old[k] & hooks.masks[k]
        assert torch.equal(w.detach()[stay], before[k][stay])  # untouched by SGD
        assert not w.detach()[~hooks.masks[k]].any()
    assert not opt.state  # the optimizer never stepped
    assert not hooks.replace_step(tr)  # next update only after delta_t SGD steps


def test_first_layer_dense_and_outside_the_mask_by_default() -> None:
    model = build_model("resnet8", 10, width=0.5)
    p = build_params("rigl", {})
    assert p.dense_first_layer  # the CIFAR reference: prune_first_layer=False
    masks = RigL(SimpleNamespace(kappa=0.9, seed=0), p).initial_masks(model)
    named = M.prunable_named_weights(model)
    first = named[0][0]
    assert first not in masks and set(masks) == {k for k, _ in named[1:]}
    n = sum(w.numel() for _, w in named)
    kept = named[0][1].numel() + sum(int(m.sum()) for m in masks.values())
    assert kept == n - M.target_zeros(0.9, n)  # the whole network at exactly kappa


def test_updates_keep_layer_density_and_grow_at_zero() -> None:
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    p = RigLParams(delta_t=3, end_frac=0.75, dense_first_layer=False)
    hooks = RigLHooks(p)
    hooks.masks = RigL(SimpleNamespace(kappa=0.8, seed=0), p).initial_masks(model)
    counts = {k: int(m.sum()) for k, m in hooks.masks.items()}
    n = M.num_prunable(model)
    assert sum(counts.values()) == n - M.target_zeros(0.8, n)
    events = _loop(model, hooks, 24, opt)
    changed = 0
    for _, before, after, grads, _ in events:
        for k, m in after.items():
            assert int(m.sum()) == counts[k]  # per-layer density constant
            new = m & ~before[k]
            changed += int(new.sum())
            # the dense gradient picked them: no newly grown weight has a smaller |grad|
            # than an inactive weight left out
            out = ~m
            if new.any() and out.any():
                assert grads[k][new].min() >= grads[k][out].max()
    assert changed > 0
    # masked weights (and their momentum) are exactly zero
    for k, w in M.prunable_named_weights(model):
        assert not w[~hooks.masks[k]].any()
        assert not opt.state[w]["momentum_buffer"][~hooks.masks[k]].any()


def test_new_connections_start_at_zero_with_zero_momentum() -> None:
    torch.manual_seed(1)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    p = RigLParams(delta_t=2, alpha=1.0, end_frac=1.0, dense_first_layer=False)
    hooks = RigLHooks(p)
    hooks.masks = RigL(SimpleNamespace(kappa=0.7, seed=3), p).initial_masks(model)
    events = _loop(model, hooks, 4, opt)  # updates at t = 0 and t = 2 (iterations 0 and 3)
    it, before, after, _, _ = events[-1]
    assert it == 3
    for k, w in M.prunable_named_weights(model):
        new = after[k] & ~before[k]
        assert new.any()
        assert not w[new].any() and not opt.state[w]["momentum_buffer"][new].any()


@pytest.mark.slow
def test_rigl_end_to_end_exact(make_spec, tmp_path) -> None:
    spec = make_spec("rigl", kappa=0.9, params={"delta_t": 4}, finetune_epochs=2)
    metrics = execute(spec, tmp_path / "rigl", progress=False)
    n = metrics["num_prunable"]
    assert metrics["sparsity_ok"] and metrics["num_zero"] == math.floor(0.9 * n)
    assert metrics["rigl"]["updates"] >= 3
    # per-layer counts in the saved model are the ERK counts, the first layer dense
    state = safe_torch_load(tmp_path / "rigl" / "model.pt")
    items = M.prunable_state_items(state)
    counts = layer_keep_counts([(k, tuple(v.shape)) for k, v in items], n - math.floor(0.9 * n),
                               dense={items[0][0]})
    assert {k: int((v != 0).sum()) for k, v in items} == counts
    assert build_params("rigl", {}).distribution == "erk"


def test_only_positions_with_gradient_grow():
    """A grown weight with zero gradient would stay zero for ever (sparsity above target)."""
    from hypersparse.methods.rigl import drop_grow

    w = torch.tensor([0.5, 0.4, 0.3, 0.0, 0.0, 0.0])
    mask = torch.tensor([True, True, True, False, False, False])
    grad = torch.tensor([0.0, 0.0, 0.0, 0.9, 0.0, 0.0])  # one live inactive position only
    new, grown = drop_grow(w, grad, mask, 0.67, "w")
    assert int(new.sum()) == 3 and grown.tolist() == [False, False, False, True, False, False]
