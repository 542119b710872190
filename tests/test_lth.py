"""LTH / IMP with rewinding: round arithmetic, rewinding to the snapshot, exact final count."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from hypersparse import masks as M
from hypersparse.engine import Trainer
from hypersparse.io import safe_torch_load
from hypersparse.methods import ParamError, build_params
from hypersparse.methods.lth import LotteryTicket, num_rounds, round_zeros, shrink_masks
from hypersparse.runner import execute
from hypersparse.spec import ScheduleSpec


@pytest.mark.parametrize(
    ("kappa", "rounds"), [(0.2, 1), (0.36, 2), (0.5, 4), (0.9, 11), (0.98, 18), (0.998, 28)]
)
def test_round_count_formula(kappa: float, rounds: int) -> None:
    assert num_rounds(kappa, 0.2) == rounds
    assert rounds == max(1, math.ceil(math.log(1 - kappa) / math.log(0.8) - 1e-9))


def test_round_zeros_grow_by_fraction_of_remaining_and_end_exact() -> None:
    z = round_zeros(0.9, 0.2, 1000)
    assert z[:3] == [200, 360, 488]  # 20% of the remaining each round
    assert z[-1] == 900 and len(z) == 11
    assert all(a < b for a, b in zip(z, z[1:], strict=False))


@pytest.mark.parametrize("n", [1000, 1001, 1_855_584, 20_024_000])
@pytest.mark.parametrize("kappa", [0.9, 0.98, 0.998])
def test_round_zeros_follow_open_lth(n: int, kappa: float) -> None:
    """open_lth sparse_global: each round prunes ceil(0.2 * remaining) more weights."""
    z = round_zeros(kappa, 0.2, n)
    prev = 0
    for zr in z[:-1]:
        assert zr == prev + math.ceil(0.2 * (n - prev))
        prev = zr
    assert z[-1] == math.floor(kappa * n) and z[-1] <= prev + math.ceil(0.2 * (n - prev))
    assert len(z) <= num_rounds(kappa, 0.2)


def test_vgg_classifier_is_not_pruned_as_in_open_lth(make_spec) -> None:
    from hypersparse.models import build_model

    vgg = build_model("vgg11", 10, in_channels=1, width=0.25)
    spec = make_spec("lth", kappa=0.9, model="vgg11")
    auto = LotteryTicket(spec, build_params("lth", {}))
    assert auto.spared_layers(vgg) == {"classifier.weight"}
    assert auto.spared_layers(build_model("resnet8", 10)) == set()  # ResNets: every layer
    assert LotteryTicket(spec, build_params("lth", {"ignore_classifier": "off"})).spared_layers(
        vgg) == set()
    named = dict(M.prunable_named_weights(vgg))
    n = sum(w.numel() for w in named.values())
    fc = named["classifier.weight"].numel()
    masks = shrink_masks(vgg, int(0.9 * n), {"classifier.weight"})
    assert masks["classifier.weight"].all()
    assert sum(int((~m).sum()) for m in masks.values()) == int(0.9 * n)
    # beyond what the other layers hold, the smallest classifier weights go, no more
    everything_else = n - fc
    deep = shrink_masks(vgg, everything_else + 3, {"classifier.weight"})
    assert int((~deep["classifier.weight"]).sum()) == 3
    assert not any(m.any() for k, m in deep.items() if k != "classifier.weight")


def test_shrink_masks_never_revives_zeros() -> None:
    lin = torch.nn.Linear(5, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(1.0, 21.0).view(4, 5))
        lin.weight[0, :3] = 0.0  # pruned earlier (the smallest live value is 4.0)
    masks = shrink_masks(lin, 8)
    assert int((~masks["weight"]).sum()) == 8
    assert not masks["weight"][0, :3].any()
    assert masks["weight"].view(-1)[8:].all() and not masks["weight"].view(-1)[:8].any()


def test_params_and_dense_inputs() -> None:
    p = build_params("lth", {"rewind_epoch": 1})
    assert LotteryTicket.dense_inputs(p) == ["model.pt", "snapshot_e1.pt"]
    assert LotteryTicket.snapshot_epochs(p) == [1]
    with pytest.raises(ParamError):
        build_params("lth", {"prune_fraction": 1.0})


def test_rewind_schedule_continues_dense_schedule(make_spec) -> None:
    spec = dataclasses.replace(make_spec("lth", kappa=0.9), dense=ScheduleSpec(160, (80, 120)))
    method = LotteryTicket(spec, build_params("lth", {"rewind_epoch": 5}))
    ph = method.round_phase(3)
    assert (ph.name, ph.epochs, ph.milestones, ph.lr) == ("round3", 155, (75, 115), spec.optim.lr)
    late = LotteryTicket(spec, build_params("lth", {"rewind_epoch": 100}))
    assert late.round_phase(1).milestones == (20,)
    assert late.round_phase(1).lr == pytest.approx(spec.optim.lr * 0.1)


def test_round_start_rewinds_survivors_to_snapshot(make_spec, dense_run, tmp_path) -> None:
    spec = make_spec("lth", kappa=0.5, params={"rewind_epoch": 1})
    method = LotteryTicket(spec, build_params("lth", spec.params))
    trainer = Trainer(spec, tmp_path / "run", progress=False)
    n = M.num_prunable(trainer.model)
    masks = method.start_round(trainer, 1, n // 2, dense_run)
    final = safe_torch_load(dense_run / "model.pt")
    snap = safe_torch_load(dense_run / "snapshot_e1.pt")["model"]
    # the mask comes from the dense *final* magnitudes ...
    expected = M.magnitude_masks(M.prunable_state_items(final), 0.5)
    assert all(torch.equal(masks[k], expected[k]) for k in expected)
    state = trainer.model.state_dict()
    for key, value in state.items():
        if key in masks:  # ... and survivors carry the *snapshot* values, the rest is zero
            m = masks[key]
            assert torch.equal(value[m], snap[key][m]) and not value[~m].any()
        else:  # BN weights and running statistics come from the snapshot too
            assert torch.equal(value, snap[key]), key
    # a later round prunes 20% more among the survivors only
    later = method.start_round(trainer, 2, n // 2 + n // 10, dense_run)
    assert all(not (later[k] & ~masks[k]).any() for k in masks)


@pytest.mark.slow
def test_lth_end_to_end_exact_and_resumes_rounds(make_spec, dense_run, tmp_path) -> None:
    spec = make_spec("lth", kappa=0.36, params={"rewind_epoch": 1})
    out = tmp_path / "lth"
    metrics = execute(spec, out, dense_run, progress=False)
    n = metrics["num_prunable"]
    assert metrics["sparsity_ok"] and metrics["num_zero"] == math.floor(0.36 * n)
    assert metrics["lth"]["rounds"] == 2 and metrics["lth"]["epochs_per_round"] == 1
    assert metrics["lth"]["total_epochs"] == 2 + 2 * 1
    hist = (out / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in hist] == ["round1", "round2"]
    assert json.loads((out / "metrics.json").read_text())["lth"]["zeros_per_round"][0] == (
        math.ceil(0.2 * n)
    )
    # Stopped after round 1 (a kappa=0.2 run is exactly round 1), then continued to 0.36:
    # round 1 is skipped and the result matches the uninterrupted run bit for bit.
    part = tmp_path / "part"
    one = make_spec("lth", kappa=0.2, params={"rewind_epoch": 1})
    t1 = Trainer(one, part, progress=False)
    LotteryTicket(one, build_params("lth", one.params)).run(t1, dense_run)
    t2 = Trainer(spec, part, progress=False)
    LotteryTicket(spec, build_params("lth", spec.params)).run(t2, dense_run)
    assert [r["phase"] for r in t2.history] == ["round1", "round2"]
    final = safe_torch_load(out / "model.pt")
    for key, value in t2.model.state_dict().items():
        assert torch.equal(value, final[key]), key
