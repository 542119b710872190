"""Pruning-at-initialisation baselines: scores against hand computations, exact counts, end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hypersparse import masks as M
from hypersparse.masks import prunable_named_weights, target_zeros
from hypersparse.methods import build_params, get_method
from hypersparse.methods import pai_scores as S

FAMILIES = ("random", "snip", "grasp", "synflow", "smart_ratio")


def _mlp(seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3, bias=bias), nn.ReLU(), nn.Linear(3, 2, bias=bias))


def _batch(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_snip_scores_equal_abs_grad_times_weight_by_hand() -> None:
    net = _mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _batch(1)
    scores = dict(S.snip_scores(net, [(x, y)]))
    # Hand-derived gradient of the mean CE of logits = W2 relu(W1 x + b1) + b2.
    w1, b1, w2, b2 = net[0].weight, net[0].bias, net[2].weight, net[2].bias
    with torch.no_grad():
        pre = x @ w1.T + b1
        h = pre.clamp_min(0)
        delta = (torch.softmax(h @ w2.T + b2, 1) - F.one_hot(y, 2).float()) / len(y)
        g2 = delta.T @ h
        g1 = ((delta @ w2) * (pre > 0).float()).T @ x
    torch.testing.assert_close(scores["0.weight"], (g1 * w1).abs())
    torch.testing.assert_close(scores["2.weight"], (g2 * w2).abs())
    masks = S.masks_keep_highest(list(scores.items()), 0.5)
    flat = torch.cat([scores[k].flatten() for k in masks])
    kept = torch.cat([m.flatten() for m in masks.values()])
    assert int(kept.sum()) == 18 - target_zeros(0.5, 18)
    assert flat[kept].min() >= flat[~kept].max()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_grasp_scores_are_minus_w_times_hessian_gradient() -> None:
    net = _mlp(3)
    batches = [_batch(4), _batch(5)]
    temp = 7.0
    scores = dict(S.grasp_scores(net, batches, temperature=temp, reinit_linear=False))
    # H and g are taken over the prunable weights only (biases held fixed), as in GraSP.
    names = ["0.weight", "2.weight"]
    w0 = tuple(dict(net.named_parameters())[k].detach().clone() for k in names)

    def loss_of(xb: torch.Tensor, yb: torch.Tensor):
        def f(*ws: torch.Tensor) -> torch.Tensor:
            out = torch.func.functional_call(net, dict(zip(names, ws, strict=True)), (xb,))
            return F.cross_entropy(out / temp, yb)

        return f

    g = [torch.zeros_like(w) for w in w0]
    for b in batches:
        ws = [w.clone().requires_grad_() for w in w0]
        for acc, gb in zip(g, torch.autograd.grad(loss_of(*b)(*ws), ws), strict=True):
            acc += gb
    hg = [torch.zeros_like(w) for w in w0]
    for b in batches:
        _, prod = torch.autograd.functional.hvp(loss_of(*b), w0, tuple(g))
        hg = [a + p for a, p in zip(hg, prod, strict=True)]
    for key, w, h in zip(names, w0, hg, strict=True):
        torch.testing.assert_close(scores[key], -w * h, rtol=1e-4, atol=1e-10)
    # GraSP removes the highest scores: every removed score >= every kept one, exact count.
    masks = S.masks_remove_highest(list(scores.items()), 0.75)
    flat = torch.cat([scores[k].flatten() for k in masks])
    kept = torch.cat([m.flatten() for m in masks.values()])
    assert int((~kept).sum()) == target_zeros(0.75, 18)
    assert flat[~kept].min() >= flat[kept].max()


def test_grasp_reinit_touches_only_the_scoring_copy() -> None:
    net = _mlp(3)
    before = [p.clone() for p in net.parameters()]
    a = S.grasp_scores(net, [_batch(4)], generator=torch.Generator().manual_seed(0))
    b = S.grasp_scores(net, [_batch(4)], generator=torch.Generator().manual_seed(0))
    plain = S.grasp_scores(net, [_batch(4)], reinit_linear=False)
    assert all(torch.equal(s, t) for (_, s), (_, t) in zip(a, b, strict=True))
    assert not torch.equal(a[0][1], plain[0][1])
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters(), strict=True))


def test_synflow_scores_by_hand_on_a_linear_net() -> None:
    net = _mlp(7)
    w1, b1, w2 = net[0].weight.detach(), net[0].bias.detach(), net[2].weight.detach()
    scores = dict(S.synflow_scores(net, (4,)))
    # R = 1^T |W2| (|W1| 1 + |b1|) + sum|b2|: dR/dW1[i, j] = colsum(|W2|)[i], dR/dW2[k, i] = h_i.
    h = w1.abs().sum(1) + b1.abs()
    torch.testing.assert_close(scores["0.weight"], w1.abs() * w2.abs().sum(0)[:, None])
    torch.testing.assert_close(scores["2.weight"], w2.abs() * h[None, :])
    assert scores["0.weight"].dtype == torch.float32  # the reference scores in float32
    wide = dict(S.synflow_scores(net, (4,), double=True))
    assert wide["0.weight"].dtype == torch.float64
    mask = {
        "0.weight": torch.ones(3, 4, dtype=torch.bool),
        "2.weight": torch.zeros(2, 3, dtype=torch.bool),
    }
    mask["2.weight"][0, 0] = True
    masked = dict(S.synflow_scores(net, (4,), masks=mask))
    assert masked["0.weight"][1:].eq(0).all() and masked["0.weight"][0].gt(0).all()
    assert masked["2.weight"].count_nonzero() == 1


def test_synflow_needs_no_data_and_keeps_the_model(make_spec, tmp_path: Path) -> None:
    from hypersparse.engine import Trainer

    trainer = Trainer(make_spec("synflow", kappa=0.95), tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    class NoData:
        def set_epoch(self, e: int) -> None:
            raise AssertionError("SynFlow must not read data")

        def __iter__(self):
            raise AssertionError("SynFlow must not read data")

    method = get_method("synflow")(trainer.spec, build_params("synflow", {"iterations": 10}))
    trainer.train_loader = NoData()  # type: ignore[assignment]
    masks = method.masks(trainer)
    again = method.masks(trainer)
    assert all(torch.equal(masks[k], again[k]) for k in masks)
    n = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == target_zeros(0.95, n)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    # BN batch statistics play no part (eval mode): scores do not depend on train/eval mode.
    trainer.model.train()
    s1 = S.synflow_scores(trainer.model, (1, 16, 16))
    trainer.model.eval()
    s2 = S.synflow_scores(trainer.model, (1, 16, 16))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(s1, s2, strict=True))


def test_synflow_iterations_never_revive_and_one_round_is_one_shot() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    one = S.synflow_masks(net, (6,), 0.8, iterations=1)
    ref = S.masks_keep_highest(S.synflow_scores(net, (6,)), 0.8)
    assert all(torch.equal(one[k], ref[k]) for k in one)
    many = S.synflow_masks(net, (6,), 0.8, iterations=20)
    n = sum(m.numel() for m in many.values())
    assert sum(int(m.sum()) for m in many.values()) == n - target_zeros(0.8, n)
    # the last round's scores, computed on the final mask, are positive exactly on it
    final = dict(S.synflow_scores(net, (6,), masks=many))
    assert all(bool((final[k] > 0).le(many[k]).all()) for k in many)


@pytest.mark.parametrize("n,kappa", [(1_855_584, 0.998), (20_024_000, 0.9), (12_345, 0.95)])
def test_synflow_round_counts_follow_the_reference_rounding(n: int, kappa: float) -> None:
    """Synaptic-Flow: round k prunes k' = int((1 - d^(k/T)) N) by kthvalue, d = 1 - kappa."""
    T = 100
    keeps = S.synflow_round_keeps(n, kappa, T)
    for k in range(1, T):
        sparse = (1.0 - kappa) ** (k / T)  # prune_loop's exponential schedule
        assert keeps[k - 1] == n - int((1.0 - sparse) * n)  # _global_mask's k
    assert keeps[-1] == n - target_zeros(kappa, n)
    assert all(a >= b for a, b in zip(keeps, keeps[1:], strict=False))


def test_smart_ratio_densities_follow_the_formula() -> None:
    sizes = [300, 2000, 2000, 4000, 500]
    lin = [False, False, False, False, True]
    keep = 900
    p = S.smart_ratio_densities(sizes, lin, keep, 0.3)
    assert p[4] == math.floor(0.3 * 500) / 500
    raw = [(5 - i) ** 2 + (5 - i) for i in range(5)]  # 30, 20, 12, 6, (2)
    for i in range(1, 4):
        assert p[i] / p[0] == pytest.approx(raw[i] / raw[0])
    assert sum(d * n for d, n in zip(p, sizes, strict=True)) == pytest.approx(keep)
    vgg = S.smart_ratio_densities(sizes, lin, keep, 0.3, index_decay=True)
    for i in range(1, 4):
        assert vgg[i] / vgg[0] == pytest.approx(raw[i] / raw[0] / (i + 1) ** 2)
    assert sum(d * n for d, n in zip(vgg, sizes, strict=True)) == pytest.approx(keep)


def test_smart_ratio_caps_at_one_and_moves_the_excess_on() -> None:
    sizes, lin = [100, 1000, 1000, 100], [False, False, False, True]
    p = S.smart_ratio_densities(sizes, lin, 1500, 0.3)
    assert p[0] == 1.0 and all(0 <= d <= 1 for d in p) and p[3] == 0.3
    assert sum(d * n for d, n in zip(p, sizes, strict=True)) == pytest.approx(1500)
    assert S.smart_ratio_densities(sizes, lin, 2200, 0.3) == [1.0, 1.0, 1.0, 1.0]
    # classifier budget alone exceeds the target: it gets half, the others share the rest
    q = S.smart_ratio_densities(sizes, lin, 21, 0.3)
    assert sum(d * n for d, n in zip(q, sizes, strict=True)) == pytest.approx(21)
    assert q[3] * 100 == 10 and q[0] > q[1] > q[2] > 0


def test_apportion_is_exact() -> None:
    assert M.apportion([1.5, 1.5, 1.0], [5, 5, 5], 4) == [2, 1, 1]
    assert M.apportion([0.4, 0.4, 0.2], [1, 1, 1], 1) == [1, 0, 0]
    assert M.apportion([2.9, 0.0], [2, 3], 4) == [2, 2]
    with pytest.raises(ValueError):
        M.apportion([1.0], [1], 2)


def test_smart_ratio_masks_exact_counts_and_random_positions() -> None:
    from hypersparse.models import build_model

    torch.manual_seed(0)
    model = build_model("vgg11", 10, in_channels=1, width=0.125)
    named = prunable_named_weights(model)
    sizes = [w.numel() for _, w in named]
    n = sum(sizes)
    m1 = S.smart_ratio_masks(model, 0.95, torch.Generator().manual_seed(1), index_decay=True)
    m2 = S.smart_ratio_masks(model, 0.95, torch.Generator().manual_seed(2), index_decay=True)
    counts = [int(m1[k].sum()) for k, _ in named]
    assert sum(counts) == n - target_zeros(0.95, n)
    assert counts == [int(m2[k].sum()) for k, _ in named]
    assert any(not torch.equal(m1[k], m2[k]) for k in m1)
    p = S.smart_ratio_densities(sizes, [False] * (len(sizes) - 1) + [True], sum(counts), 0.3, True)
    assert all(abs(c - d * s) < 1 for c, d, s in zip(counts, p, sizes, strict=True))
    assert counts[-1] == math.floor(0.3 * sizes[-1])


def test_random_masks_exact_and_seeded() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(50, 40), nn.Linear(40, 30))
    m1 = S.random_masks(net, 0.9, torch.Generator().manual_seed(0))
    m2 = S.random_masks(net, 0.9, torch.Generator().manual_seed(0))
    m3 = S.random_masks(net, 0.9, torch.Generator().manual_seed(1))
    assert sum(int((~m).sum()) for m in m1.values()) == target_zeros(0.9, 3200)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert any(not torch.equal(m1[k], m3[k]) for k in m1)


@pytest.mark.parametrize(
    "bad",
    [
        ("snip", {"num_batches": 0}),
        ("grasp", {"temperature": 0}),
        ("synflow", {"iterations": 0}),
        ("smart_ratio", {"linear_keep_ratio": 1.5}),
        ("smart_ratio", {"index_decay": "maybe"}),
    ],
)
def test_params_are_validated(bad) -> None:
    from hypersparse.methods import ParamError

    with pytest.raises(ParamError):
        build_params(*bad)


@pytest.mark.parametrize("kappa", [0.9, 0.998])
@pytest.mark.parametrize("family", FAMILIES)
def test_end_to_end_exact_sparsity_and_masks_hold(make_spec, tmp_path: Path, family, kappa) -> None:
    from hypersparse.engine import Trainer
    from hypersparse.io import safe_torch_load
    from hypersparse.runner import execute

    params = {"synflow": {"iterations": 20}, "grasp": {"num_batches": 1}}.get(family, {})
    spec = make_spec(family, kappa=kappa, params=params, finetune_epochs=1)
    assert spec.optim.momentum > 0 and spec.optim.weight_decay > 0
    metrics = execute(spec, tmp_path / "run", progress=False)
    state = safe_torch_load(tmp_path / "run" / "model.pt")
    weights = {k: v for k, v in state.items() if k.endswith("weight") and v.dim() >= 2}
    n = sum(v.numel() for v in weights.values())
    assert metrics["sparsity_ok"] and metrics["num_zero"] == target_zeros(kappa, n)
    assert sum(int((v == 0).sum()) for v in weights.values()) == target_zeros(kappa, n)
    assert metrics["epochs_trained"] == 1 and "disconnected_layers" in metrics
    if kappa > 0.99:
        return  # extreme sparsity: counts exact, disconnected layers recorded, no crash
    # the saved zeros are exactly the mask computed at initialisation (nothing revived)
    fresh = Trainer(spec, tmp_path / "fresh", progress=False)
    masks = get_method(family)(spec, build_params(family, params)).masks(fresh)
    init = dict(prunable_named_weights(fresh.model))
    for k, v in weights.items():
        assert torch.equal(v != 0, masks[k]), k
        assert not torch.equal(v[masks[k]], init[k].detach()[masks[k]]) or not masks[k].any()


def test_snip_grasp_score_on_class_balanced_data(make_spec, tmp_path: Path) -> None:
    """sanity-checking-pruning: 10 images per class of a shuffled augmented pass, class by
    class; GraSP splits the batch into halves (the first half: the lower classes)."""
    from hypersparse.engine import Trainer
    from hypersparse.methods.pai import reference_scoring_size

    assert reference_scoring_size("cifar10", "resnet32") == (10, 1)
    assert reference_scoring_size("cifar100", "vgg19") == (10, 1)
    assert reference_scoring_size("tinyimagenet", "resnet32") == (1, 10)
    assert reference_scoring_size("cifar10", "resnet56") == (1, 10)
    trainer = Trainer(make_spec("snip", kappa=0.9), tmp_path / "run", progress=False)
    classes = trainer.info.num_classes
    (x, y), = build_params("snip", {}).batches(trainer)
    assert torch.equal(torch.bincount(y, minlength=classes), torch.full((classes,), 10))
    assert torch.equal(y, torch.arange(classes).repeat_interleave(10))  # class by class
    assert x.shape[0] == 10 * classes
    halves = build_params("grasp", {}).batches(trainer, split_halves=True)
    assert [len(b[1]) for b in halves] == [5 * classes, 5 * classes]
    assert set(halves[0][1].tolist()) == set(range(classes // 2))
    several = build_params("snip", {"samples_per_class": 2, "iterations": 3}).batches(trainer)
    assert len(several) == 3 and all(len(b[1]) == 2 * classes for b in several)
    assert not torch.equal(several[0][0], several[1][0])  # a fresh pass per iteration
    old = build_params("snip", {"scoring_data": "batches", "num_batches": 2}).batches(trainer)
    assert [len(b[1]) for b in old] == [trainer.spec.optim.batch_size] * 2
    with pytest.raises(ValueError, match="samples_per_class"):
        build_params("snip", {"samples_per_class": 10_000}).batches(trainer)
