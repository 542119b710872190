"""xRDA: the update checked against hand arithmetic, its schedule, resume, and both methods."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from hypersparse.masks import target_zeros
from hypersparse.optim_xrda import XRDA, cosine_schedule, l1_weights
from hypersparse.runner import execute

# Hyper-parameters of the hand-computed steps: K = 4 makes cos(pi k/K) simple.
HP = dict(K=4, h0=1.0, tau=2.0, tau_b=1.0, lam=0.1, M=10.0, weight_decay=0.1)


def soft(z: float, t: float) -> float:
    """sign(z) max(|z| - t, 0) in plain Python."""
    return math.copysign(max(abs(z) - t, 0.0), z) if abs(z) > t else 0.0


def two_tensors() -> tuple[nn.Parameter, nn.Parameter]:
    """A 1x3 weight (prunable) and a 1-element bias, with fixed gradients."""
    w = nn.Parameter(torch.tensor([[0.5, -0.2, 0.1]], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([0.3], dtype=torch.float64))
    return w, b


def set_grads(w: nn.Parameter, b: nn.Parameter) -> None:
    w.grad = torch.tensor([[0.1, 0.2, -0.3]], dtype=torch.float64)
    b.grad = torch.tensor([0.05], dtype=torch.float64)


def test_two_steps_match_hand_arithmetic() -> None:
    w, b = two_tensors()
    opt = XRDA([w, b], **HP)
    set_grads(w, b)
    opt.step()
    # Step k=1 of K=4: cos(pi/4) = 0.70710678...
    h1, beta1 = 0.5 * (1 + 0.7071067811865476), 0.5 * (1 - 0.7071067811865476)
    assert (h1, beta1) == pytest.approx((0.8535533905932737, 0.1464466094067262))
    ev1 = 1 - math.exp(-h1 / 2.0)  # v's new-gradient weight, tau = 2
    ea1 = 1 - math.exp(-h1 / 1.0)  # a's new-|w| weight, tau_b = 1
    # weight: g = grad + 0.1 w
    g = [0.1 + 0.1 * 0.5, 0.2 + 0.1 * -0.2, -0.3 + 0.1 * 0.1]  # [0.15, 0.18, -0.29]
    a1 = [ea1 * 0.5, ea1 * 0.2, ea1 * 0.1]  # a starts at 0
    c1 = [10 / (1 + 9 * 1.0), 10 / (1 + 9 * 0.4), 10 / (1 + 9 * 0.2)]  # a/max(a) = 1, .4, .2
    B1 = [h1 * c for c in c1]  # B starts at 0
    v1 = [ev1 * gi for gi in g]  # v starts at 0
    z1 = [0.5 - h1 * v1[0], -0.2 - h1 * v1[1], 0.1 - h1 * v1[2]]  # z starts as w
    p1 = [soft(z1[i], 0.1 * B1[i]) for i in range(3)]
    assert p1[2] == 0.0 and p1[0] == pytest.approx(0.37017, abs=1e-5)  # 0.45552 - 0.08536
    assert p1[0] == pytest.approx(0.5 - h1 * ev1 * 0.15 - 0.1 * h1 * 1.0)
    assert w.detach().flatten().tolist() == pytest.approx(p1, rel=1e-12, abs=1e-15)
    assert w[0, 2].item() == 0.0
    # bias: c = 0, so no threshold at all
    gb = 0.05 + 0.1 * 0.3
    vb1 = ev1 * gb
    zb1 = 0.3 - h1 * vb1
    assert b.item() == pytest.approx(zb1, rel=1e-12)
    st = opt.state[w]
    assert st["a"].flatten().tolist() == pytest.approx(a1)
    assert st["B"].flatten().tolist() == pytest.approx(B1)
    assert "B" not in opt.state[b]

    # Step k=2: cos(pi/2) = 0, so h = 0.5, beta = 0.5.
    set_grads(w, b)
    opt.step()
    h2, beta2 = 0.5, 0.5
    ev2, ea2 = 1 - math.exp(-0.25), 1 - math.exp(-0.5)
    a2 = [(1 - ea2) * a1[i] + ea2 * abs(p1[i]) for i in range(3)]
    c2 = [10 / (1 + 9 * ai / max(a2)) for ai in a2]
    B2 = [beta2 * B1[i] + h2 * c2[i] for i in range(3)]
    g2 = [[0.1, 0.2, -0.3][i] + 0.1 * p1[i] for i in range(3)]
    v2 = [(1 - ev2) * v1[i] + ev2 * g2[i] for i in range(3)]
    z2 = [beta2 * z1[i] + (1 - beta2) * p1[i] - h2 * v2[i] for i in range(3)]
    p2 = [soft(z2[i], 0.1 * B2[i]) for i in range(3)]
    assert w.detach().flatten().tolist() == pytest.approx(p2, rel=1e-12, abs=1e-15)
    vb2 = (1 - ev2) * vb1 + ev2 * (0.05 + 0.1 * zb1)
    zb2 = beta2 * zb1 + (1 - beta2) * zb1 - h2 * vb2
    assert b.item() == pytest.approx(zb2, rel=1e-12)
    assert opt.num_iterations() == 2


def test_cosine_schedule_values() -> None:
    assert cosine_schedule(0, 100, 2.0) == pytest.approx((2.0, 0.0))
    assert cosine_schedule(50, 100, 2.0) == pytest.approx((1.0, 0.5))
    assert cosine_schedule(100, 100, 2.0) == pytest.approx((0.0, 1.0))
    assert cosine_schedule(150, 100, 2.0) == pytest.approx((0.0, 1.0))  # clamped past K
    w, _ = two_tensors()
    opt = XRDA([w], K=100, h0=2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(cosine_schedule(1, 100, 2.0)[0])


def test_large_lambda_gives_exact_zeros_and_spares_1d_params() -> None:
    w, b = two_tensors()
    w2, b2 = two_tensors()
    opt = XRDA([w, b], **{**HP, "lam": 1e3})
    ref = XRDA([w2, b2], **{**HP, "lam": 0.0})
    for o, (x, y) in ((opt, (w, b)), (ref, (w2, b2))):
        set_grads(x, y)
        o.step()
    assert torch.equal(w.detach(), torch.zeros_like(w))
    assert not torch.signbit(w.detach()).any()  # +0.0, not -0.0
    assert torch.equal(b.detach(), b2.detach()) and b.item() != 0.0  # c = 0 for 1-D params


def test_l1_weights() -> None:
    a = torch.tensor([[2.0, 1.0, 0.0]])
    assert l1_weights(a, 5.0).flatten().tolist() == pytest.approx([1.0, 5 / 3, 5.0])
    assert torch.equal(l1_weights(torch.zeros(2, 2), 5.0), torch.zeros(2, 2))


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _steps(model: nn.Module, opt: XRDA, n: int, start: int) -> None:
    gen = torch.Generator().manual_seed(start)
    for _ in range(n):
        x = torch.randn(8, 4, generator=gen)
        y = torch.randint(0, 3, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_state_dict_round_trip_resumes_identically() -> None:
    hp = dict(K=10, h0=0.5, lam=1e-2, M=50.0)
    model = _tiny_model()
    opt = XRDA(model.parameters(), **hp)
    _steps(model, opt, 3, 0)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    _steps(model, opt, 4, 1)

    model2 = _tiny_model()
    model2.load_state_dict(saved_model)
    opt2 = XRDA(model2.parameters(), **hp)
    opt2.load_state_dict(saved_opt)
    assert opt2.num_iterations() == 3
    _steps(model2, opt2, 4, 1)
    for (k, v), v2 in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(v, v2), k
    assert any(int((p == 0).sum()) for p in model2.parameters() if p.dim() >= 2)


def test_xrda_method_end_to_end(make_spec, tmp_path) -> None:
    spec = make_spec("xrda", params={"epochs": 1, "lam": 3e-3}, batch_size=256)
    m = execute(spec, tmp_path / "xrda", progress=False)
    assert m["status"] == "ok" and m["kappa"] == 0.0
    assert m["sparsity"] > 0 and m["target_zeros"] is None
    state = torch.load(tmp_path / "xrda" / "model.pt")
    assert m["num_zero"] == sum(int((v == 0).sum()) for k, v in state.items() if v.dim() >= 2)
    assert m["xrda"]["num_zero"] == m["num_zero"] and m["xrda"]["iterations"] > 0
    saved = json.loads((tmp_path / "xrda" / "metrics.json").read_text())
    assert saved["sparsity"] == m["sparsity"]


def test_xrda_at_kappa_is_exact(make_spec, tmp_path) -> None:
    spec = make_spec(
        "xrda_at_kappa",
        kappa=0.6,
        params={"epochs": 1, "lam": 3e-3},
        finetune_epochs=1,
        batch_size=256,
    )
    m = execute(spec, tmp_path / "xk", progress=False)
    assert m["num_zero"] == target_zeros(0.6, m["num_prunable"]) and m["sparsity_ok"]
    assert 0 < m["xrda"]["sparsity_before_pruning"] < 0.6
    assert m["xrda"]["over_sparse"] is False
    phases = [ln.split(",")[0] for ln in (tmp_path / "xk" / "history.csv").read_text().split()[1:]]
    assert phases == ["xrda", "finetune"]


def test_batch_size_and_tau_follow_the_authors_scripts() -> None:
    """xRDA_sparse_training_scripts: batch_size = 128 everywhere; mom_ts = b_mom_ts = 10.0 in
    VGG19-CIFAR-10-unstructured.py, 9.5 in the others."""
    from hypersparse.config import load_config, run_spec
    from hypersparse.methods import build_params
    from hypersparse.methods.xrda import resolved_taus

    cfg = load_config("config/config.yaml")
    assert run_spec(cfg, "cifar10", "resnet32", "xrda", 0.0, 0)["optim"]["batch_size"] == 128
    assert run_spec(cfg, "cifar10", "resnet32", "xrda_at_kappa", 0.9, 0)["optim"][
        "batch_size"] == 128
    assert run_spec(cfg, "cifar10", "resnet32", "omp", 0.9, 0)["optim"]["batch_size"] == 64
    assert run_spec(cfg, "cifar10", "resnet32", "dense", 0.0, 0)["optim"]["batch_size"] == 64
    p = build_params("xrda", {})
    assert resolved_taus(p, "cifar10", "vgg19") == (10.0, 10.0)
    assert resolved_taus(p, "cifar100", "vgg19") == (9.5, 9.5)
    assert resolved_taus(p, "cifar10", "resnet32") == (9.5, 9.5)
    assert resolved_taus(build_params("xrda", {"tau": 3.0}), "cifar10", "vgg19") == (3.0, 3.0)
    # a user's methods.<label>.optim wins over both
    over = load_config("config/config.yaml", {"methods": {"xrda": {"optim": {"batch_size": 32}}}})
    assert run_spec(over, "cifar10", "resnet32", "xrda", 0.0, 0)["optim"]["batch_size"] == 32
