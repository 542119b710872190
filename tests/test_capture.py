"""The GPU fast path, tested without a GPU: exact device-side selection (radix select), the
captured step's code run eagerly under a host-sync check ("emulate"), equal to the eager
step to float rounding; and the same checks on CUDA where one is present (marked ``cuda``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hypersparse import masks as M
from hypersparse.capture import HostSyncError, NoHostSync, sgd_update_
from hypersparse.engine import Hooks, Trainer
from hypersparse.regularizers import HyperSparseGradient
from hypersparse.select import radix_kth, radix_kth_of

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "normal": torch.randn(40_001, generator=g),
        "abs": torch.randn(30_000, generator=g).abs(),
        "ties": torch.randint(0, 5, (9_999,), generator=g).float(),
        "zeros": torch.cat([torch.zeros(5_000), torch.rand(5_000, generator=g)]),
        "all_equal": torch.full((777,), 0.125),
        "signed_zero_tiny": torch.tensor([-0.0, 0.0, -1.0, 1.0, -2.0, 2.0, 1e-40, -1e-40]),
        "extremes": torch.tensor([3e38, -3e38, math.inf, -math.inf, 0.5, -0.5]),
        "one": torch.tensor([0.25]),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(_cases()))
def test_radix_select_equals_kthvalue(device, name):
    if device == "cuda":
        pytest.importorskip("torch.cuda")
    v = _cases()[name].to(device)
    n = v.numel()
    for k in sorted({0, 1, n // 3, n // 2, (9 * n) // 10, n - 2, n - 1}):
        if 0 <= k < n:
            got = radix_kth_of([v], k)
            want = torch.kthvalue(v.cpu(), k + 1).values
            assert got.item() == want.item(), (name, k)


@pytest.mark.parametrize("device", DEVICES)
def test_radix_select_over_several_strided_tensors(device):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 3, 5, 5, generator=g).to(device).contiguous(
        memory_format=torch.channels_last)
    b = torch.randn(10, 7, generator=g).to(device).t()  # non-contiguous
    flat = torch.cat([a.reshape(-1), b.reshape(-1)]).cpu()
    for k in (0, 5, 300, flat.numel() - 1):
        assert radix_kth_of([a, b], k).item() == torch.kthvalue(flat, k + 1).values.item()
    with pytest.raises(ValueError):
        radix_kth_of([a, b], flat.numel())


def test_radix_select_reads_nothing_on_the_host():
    v = torch.randn(5_000).abs()
    k = torch.tensor(4_500)
    with NoHostSync():
        got = radix_kth([v], k)
    assert got.item() == torch.kthvalue(v, 4_501).values.item()
    with pytest.raises(HostSyncError):  # the check itself works: kthvalue via .item() is caught
        with NoHostSync():
            torch.kthvalue(v, int(k.item()) + 1)


def test_sync_free_hs_gradient_equals_the_bracket_path_across_moving_steps():
    """Same exact a_k (radix vs bracket), same gradient to float rounding, step after step,
    and no host read on the sync-free path."""
    torch.manual_seed(0)
    ws = [torch.randn(64, 32, 3, 3) * 0.05, torch.randn(10, 64) * 0.05]
    host, free = HyperSparseGradient(), HyperSparseGradient(sync_free=True)
    alpha = torch.tensor(0.37)
    for step in range(6):
        for w in ws:
            w.add_(torch.randn_like(w) * 1e-3 * step)
        g1 = [torch.zeros_like(w) for w in ws]
        g2 = [torch.zeros_like(w) for w in ws]
        for w, g in zip(ws, g1, strict=True):
            w.grad = g
        host.add_to_grads_(ws, 0.9, 0.37)
        for w, g in zip(ws, g2, strict=True):
            w.grad = g
        with NoHostSync():
            free.add_to_grads_(ws, 0.9, alpha)
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
    assert free.on_cpu is False and host.on_cpu is True


def test_sgd_update_with_a_device_lr_equals_torch_sgd():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    b = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    b.load_state_dict(a.state_dict())
    oa = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    lr = torch.tensor(0.1)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for step in range(20):
        for model, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        oa.step()
        if step == 0:
            ob.step()  # creates the momentum buffers (the warm-up steps do this)
        else:
            with NoHostSync():
                sgd_update_(ob, lr)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------- the engine's captured step, emulated
def _rel_diff(a: dict, b: dict) -> float:
    """Largest difference of two state dicts, relative to each tensor's largest entry."""
    return max(float((a[k] - b[k]).abs().max() / (a[k].abs().max() + 1e-12))
               for k in a if a[k].is_floating_point())


def test_emulated_steps_stay_within_the_spread_of_float_rounding(make_spec, tmp_path):
    """This tiny model amplifies rounding fast (a 1e-7 change of one weight grows ~1e4-fold in
    20 steps), so the captured step is judged against that spread: it differs from eager
    training no more than eager training differs from itself after a 1e-7 nudge."""
    from hypersparse.engine import Phase

    def run(mode, nudge=0.0):
        t = Trainer(make_spec("dense", epochs=1, batch_size=64), tmp_path / f"{mode}{nudge}",
                    progress=False, cuda_graphs=mode)
        with torch.no_grad():
            t.model.conv1.weight.view(-1)[0] += nudge
        t.fit(Phase("dense", 1, 0.05), Hooks())
        return {k: v.clone() for k, v in t.model.state_dict().items()}, t

    eager, _ = run(False)
    nudged, _ = run(False, 1e-7)
    emulated, t = run("emulate")
    assert t.graph_stats["replays"] >= 15
    spread = _rel_diff(eager, nudged)
    assert 0 < _rel_diff(eager, emulated) <= 10 * spread + 1e-6


def _train(make_spec, tmp_path, family, mode, *, kappa=0.0, params=None, epochs=2,
           dense=None):
    from hypersparse.runner import execute

    spec = make_spec(family, kappa=kappa, params=params or {}, epochs=epochs,
                     finetune_epochs=epochs, batch_size=64)
    spec = type(spec).from_dict({**spec.to_dict(), "optim": {**spec.to_dict()["optim"],
                                                             "lr": 0.005}})
    out = tmp_path / f"{family}_{mode}"
    metrics = execute(spec, out, dense, progress=False, cuda_graphs=mode)
    return metrics, torch.load(out / "model.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("family, kappa, params", [
    ("dense", 0.0, {}),
    ("art", 0.9, {"warmup_epochs": 1, "lambda_init": 1e-3, "eta": 2.0, "max_art_epochs": 2}),
    ("art", 0.9, {"warmup_epochs": 1, "lambda_init": 1e-3, "eta": 2.0, "max_art_epochs": 2,
                  "regularizer": "l1"}),
    ("omp", 0.9, {}),
    ("gmp", 0.9, {"prune_every_steps": 3}),
    ("rigl", 0.9, {"delta_t": 5}),
    ("acdc", 0.9, {"warmup_frac": 0.3, "phase_frac": 0.3, "final_frac": 0.3}),
], ids=["dense", "art-hs", "art-l1", "omp", "gmp", "rigl", "acdc"])
def test_captured_step_equals_eager_step(make_spec, dense_run, tmp_path, family, kappa, params):
    """Every full batch after the warm-up runs the captured step's code (device lr and alpha,
    sync-free HS, static gradients) under NoHostSync; results match eager training."""
    dense = dense_run if family in ("art", "omp") else None
    eager, we = _train(make_spec, tmp_path, family, False, kappa=kappa, params=params,
                       dense=dense)
    emul, wc = _train(make_spec, tmp_path, family, "emulate", kappa=kappa, params=params,
                      dense=dense)
    assert emul["step_mode"] == "emulate" and eager["step_mode"] == "off"
    assert emul["step_graph"]["replays"] > 0
    assert emul["num_zero"] == eager["num_zero"]
    # the spread of rounding over 40-90 steps of this model (see the test above): sparse
    # models stay within 1e-6, dense ones within a few 1e-3
    assert _rel_diff(we, wc) <= 5e-3


class _SyncingHooks(Hooks):
    capture_safe = True

    def before_step(self, trainer):
        if float(M.prunable_weights(trainer.model)[0].detach().abs().sum()) < 0:  # host read
            raise AssertionError


def test_a_host_read_inside_a_captured_step_is_caught(make_spec, tmp_path):
    from hypersparse.engine import Phase

    trainer = Trainer(make_spec("dense", epochs=1, batch_size=64), tmp_path / "run",
                      progress=False, cuda_graphs="emulate")
    with pytest.raises(HostSyncError):
        trainer.fit(Phase("dense", 1, 0.05), _SyncingHooks())


class _Undeclared(Hooks):  # inherits capture_safe but does not declare it: runs eagerly
    def before_step(self, trainer):
        float(M.prunable_weights(trainer.model)[0].sum())


def test_hooks_that_do_not_declare_capture_safe_run_eagerly(make_spec, tmp_path):
    from hypersparse.engine import Phase

    trainer = Trainer(make_spec("dense", epochs=1, batch_size=64), tmp_path / "run",
                      progress=False, cuda_graphs="emulate")
    trainer.fit(Phase("dense", 1, 0.05), _Undeclared())
    assert trainer.graph_stats["replays"] == 0


def test_cuda_graphs_off_on_cpu_by_default(make_spec, tmp_path):
    trainer = Trainer(make_spec("dense", epochs=1), tmp_path / "run", progress=False)
    assert trainer.step_mode == "off"


# --------------------------------------------------------------------------- on a real GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("family, kappa, params", [
    ("dense", 0.0, {}),
    ("art", 0.9, {"warmup_epochs": 1, "lambda_init": 1e-3, "eta": 2.0, "max_art_epochs": 2}),
    ("gmp", 0.9, {"prune_every_steps": 3}),
], ids=["dense", "art-hs", "gmp"])
def test_cuda_graph_step_equals_eager_step(make_spec, dense_run, tmp_path, family, kappa,
                                           params):
    from hypersparse.runner import execute

    dense = dense_run if family == "art" else None
    results = {}
    for mode in (False, None):
        spec = make_spec(family, kappa=kappa, params=params, epochs=3, finetune_epochs=3,
                         batch_size=32)
        spec = type(spec).from_dict({**spec.to_dict(), "device": "cuda"})
        out = tmp_path / f"{family}_{mode}"
        m = execute(spec, out, dense, progress=False, cuda_graphs=mode)
        results[mode] = (m, torch.load(out / "model.pt", weights_only=True))
    (me, we), (mg, wg) = results[False], results[None]
    assert mg["step_mode"] == "graph" and mg["step_graph"]["captures"] >= 1
    assert mg["step_graph"]["replays"] >= 20
    assert mg["num_zero"] == me["num_zero"]
    for k in we:
        if we[k].is_floating_point():
            torch.testing.assert_close(wg[k], we[k], rtol=2e-3, atol=2e-5, msg=k)


@cuda
@pytest.mark.cuda
def test_cuda_graph_replay_does_not_sync(make_spec, tmp_path):
    from hypersparse.engine import Phase
    from hypersparse.methods.art import ArtHooks, ArtParams

    spec = make_spec("dense", epochs=1, batch_size=32)
    spec = type(spec).from_dict({**spec.to_dict(), "device": "cuda"})
    trainer = Trainer(spec, tmp_path / "run", progress=False)
    hooks = ArtHooks(ArtParams(lambda_init=1e-3, warmup_epochs=1), 0.9, tmp_path / "work")
    trainer.fit(Phase("warm", 1, 0.05), hooks)  # warm-up, capture
    graph = trainer._graph
    assert graph is not None and graph.graph is not None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):
            graph.graph.replay()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@cuda
@pytest.mark.cuda
def test_radix_select_on_cuda_matches_cpu_on_a_large_vector():
    v = torch.randn(20_000_000, device="cuda").abs()
    k = int(0.9 * v.numel())
    assert radix_kth_of([v], k).item() == torch.kthvalue(v.cpu(), k + 1).values.item()
