"""GMP: cubic schedule values, shrinking masks that hold through momentum, exact final count."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hypersparse import masks as M
from hypersparse.engine import Phase
from hypersparse.methods import ParamError, build_params
from hypersparse.methods.gmp import (
    GMPHooks,
    GMPParams,
    GradualMagnitude,
    cubic_sparsity,
    prune_steps,
    update_steps,
)
from hypersparse.runner import execute


def test_cubic_schedule_values() -> None:
    # model_pruning: s = s_f + (s_i - s_f)(1 - p)^3, p = clip((t - begin)/(end - begin), 0, 1)
    vals = [cubic_sparsity(t, 10, 30, 0.0, 0.8) for t in (0, 10, 15, 20, 25, 30, 99)]
    expected = [0.0, 0.0, 0.8 * (1 - 0.75**3), 0.8 * (1 - 0.5**3), 0.8 * (1 - 0.25**3), 0.8, 0.8]
    assert vals == pytest.approx(expected)
    assert cubic_sparsity(15, 10, 30, 0.5, 0.9) == pytest.approx(0.9 - 0.4 * 0.75**3)


def test_update_steps_follow_the_reference_rule() -> None:
    """model_pruning: update when begin <= t <= end and last + dt <= t, last starting at 0."""
    for begin, end, dt in [(12512, 93840, 100), (0, 50, 7), (3, 40, 10), (20, 21, 5)]:
        expected, last = [], 0
        for t in range(0, end + 2):
            if begin <= t <= end and last + dt <= t:
                expected.append(t)
                last = t
        assert update_steps(begin, end, dt) == expected


def test_prune_steps_paper_and_short_schedules() -> None:
    p = GMPParams()
    assert prune_steps(160 * 782, p) == (12512, 93840, 100)  # CIFAR, batch 64: every 100 steps
    assert prune_steps(96, p) == (10, 72, 6)  # a demo schedule still prunes in 10 increments
    begin, end, dt = prune_steps(5, GMPParams(start_frac=0.0, end_frac=1.0))
    assert (begin, end, dt) == (0, 5, 1)


def test_params_and_dense_inputs() -> None:
    assert GradualMagnitude.dense_inputs(build_params("gmp", {})) == []
    assert GradualMagnitude.dense_inputs(build_params("gmp", {"from_dense": True})) == ["model.pt"]
    with pytest.raises(ParamError):
        build_params("gmp", {"start_frac": 0.8, "end_frac": 0.5})


def test_masks_shrink_on_schedule_and_hold_through_momentum() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    steps = 40
    hooks = GMPHooks(GMPParams(start_frac=0.1, end_frac=0.6, prune_every_steps=5,
                               scope="global"), kappa=0.9)
    tr = SimpleNamespace(model=model, optimizer=opt, step=0, device=torch.device("cpu"),
                         phase=Phase("gmp", 1, 0.1), train_loader=range(steps))
    hooks.on_phase_start(tr)
    assert hooks.schedule == (4, 24, 2)  # dt shrinks to give 10 increments
    n = M.num_prunable(model)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    prev = {k: m.clone() for k, m in hooks.masks.items()}
    seen = []
    for t in range(steps):
        tr.step = t
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        hooks.before_step(tr)
        opt.step()
        hooks.after_step(tr)
        hooks.after_iteration(tr)
        zeros = sum(int((w == 0).sum()) for w in M.prunable_weights(model))
        last = max((s for s in range(t + 2) if hooks.is_prune_step(s)), default=0)
        target = M.target_zeros(hooks.target(last), n)
        assert zeros == target, t  # the last pruning step's count, held between them
        assert all(not (hooks.masks[k] & ~prev[k]).any() for k in prev)  # masks only shrink
        prev = {k: m.clone() for k, m in hooks.masks.items()}
        seen.append(zeros)
    assert seen[3] == 0 and seen[-1] == math.floor(0.9 * n)
    assert [t for t in range(steps + 1) if hooks.is_prune_step(t)] == update_steps(4, 24, 2)


def test_layer_scope_prunes_every_layer_to_the_same_sparsity() -> None:
    """model_pruning gives each layer its own threshold at the common sparsity s_t."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 30), nn.ReLU(),
                          nn.Linear(30, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hooks = GMPHooks(build_params("gmp", {}), kappa=0.9)
    assert hooks.p.scope == "layer"
    tr = SimpleNamespace(model=model, optimizer=opt, step=0, device=torch.device("cpu"),
                         phase=Phase("gmp", 1, 0.1), train_loader=range(10))
    hooks.on_phase_start(tr)
    before = {k: w.detach().abs().clone() for k, w in M.prunable_named_weights(model)}
    hooks.prune(tr, 0.5)
    for k, w in M.prunable_named_weights(model):
        assert int((w == 0).sum()) == math.floor(0.5 * w.numel()), k
        kept = hooks.masks[k]
        assert before[k][~kept].max() <= before[k][kept].min()  # a threshold of its own
    hooks.prune(tr, 0.9, final=True)
    sizes = [w.numel() for w in M.prunable_weights(model)]
    zeros = [int((w == 0).sum()) for w in M.prunable_weights(model)]
    assert sum(zeros) == math.floor(0.9 * sum(sizes))
    assert all(abs(z - 0.9 * n) < 1 for z, n in zip(zeros, sizes, strict=True))



@pytest.mark.slow
def test_gmp_from_scratch_end_to_end_exact(make_spec, tmp_path) -> None:
    spec = make_spec("gmp", kappa=0.9, finetune_epochs=2)
    metrics = execute(spec, tmp_path / "gmp", None, progress=False)
    assert metrics["sparsity_ok"]
    assert metrics["num_zero"] == math.floor(0.9 * metrics["num_prunable"])
    assert metrics["gmp"]["prune_steps"] >= 10


@pytest.mark.slow
def test_gmp_from_dense_end_to_end_exact(make_spec, dense_run, tmp_path) -> None:
    spec = make_spec("gmp", kappa=0.9, params={"from_dense": True}, finetune_epochs=1)
    metrics = execute(spec, tmp_path / "gmp", dense_run, progress=False)
    assert metrics["sparsity_ok"]
    assert metrics["num_zero"] == math.floor(0.9 * metrics["num_prunable"])
