"""AC/DC: the phase sequence, dense phases really dense, exact sparsity at the end."""

from __future__ import annotations

import csv
import math

import pytest

from hypersparse.methods import ParamError, build_params
from hypersparse.methods.acdc import ACDCParams, epoch_modes
from hypersparse.runner import execute


def test_default_sequence_matches_authors_cifar_config() -> None:
    # authors' CIFAR-10 ResNet-20 config (200 epochs): prune at 10, 50, 90, 130, 170,
    # restore at 30, 70, 110, 150
    modes = epoch_modes(200, ACDCParams())
    starts = [e for e in range(1, 200) if modes[e] != modes[e - 1]]
    assert modes[0] == "dense" and modes[-1] == "sparse"
    assert starts == [10, 30, 50, 70, 90, 110, 130, 150, 170]


@pytest.mark.parametrize("epochs", [1, 2, 5, 8, 12, 160])
def test_short_schedules_keep_the_shape(epochs: int) -> None:
    modes = epoch_modes(epochs, ACDCParams())
    assert len(modes) == epochs and modes[-1] == "sparse"
    if epochs >= 2:
        assert modes[0] == "dense"  # at least one warm-up epoch
    assert "".join(m[0] for m in epoch_modes(8, ACDCParams())) == "dsdsdsds"


def test_momentum_is_reset_when_a_dense_phase_starts() -> None:
    """The authors' scripts pass --reset_momentum_after_recycling: every momentum buffer is
    zeroed when the weights are restored (a dense phase starts), not when pruning starts."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    from hypersparse.methods.acdc import ACDCHooks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    tr = SimpleNamespace(model=model, optimizer=opt)
    hooks = ACDCHooks(build_params("acdc", {}), kappa=0.5)
    hooks.set_mode(tr, "sparse")
    bias_buf = opt.state[model[0].bias]["momentum_buffer"]
    assert bias_buf.abs().sum() > 0  # compression keeps the momentum of live parameters
    hooks.set_mode(tr, "dense")
    assert all(not s["momentum_buffer"].any() for s in opt.state.values())
    kept = ACDCHooks(build_params("acdc", {"reset_momentum_on_decompress": False}), kappa=0.5)
    nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    kept.set_mode(tr, "sparse")
    kept.set_mode(tr, "dense")
    assert opt.state[model[0].bias]["momentum_buffer"].abs().sum() > 0


def test_params_validate() -> None:
    with pytest.raises(ParamError):
        build_params("acdc", {"warmup_frac": 0.5, "final_frac": 0.5})


@pytest.mark.slow
def test_acdc_end_to_end(make_spec, tmp_path) -> None:
    params = {"warmup_frac": 0.2, "phase_frac": 0.2, "final_frac": 0.2}
    spec = make_spec("acdc", kappa=0.9, params=params, finetune_epochs=5)
    assert "".join(m[0] for m in epoch_modes(5, build_params("acdc", params))) == "dsdss"
    out = tmp_path / "acdc"
    metrics = execute(spec, out, progress=False)
    n = metrics["num_prunable"]
    assert metrics["sparsity_ok"] and metrics["num_zero"] == math.floor(0.9 * n)
    assert metrics["acdc"]["modes"] == "DSDSS" and metrics["acdc"]["sparse_phases"] == 2
    with open(out / "history.csv") as fh:
        sparsity = [float(r["sparsity"]) for r in csv.DictReader(fh)]
    target = math.floor(0.9 * n) / n
    assert sparsity[1] == pytest.approx(target) and sparsity[3:] == pytest.approx([target] * 2)
    # dense phases are really dense: no mask, every weight moves (also the ones just pruned)
    assert sparsity[0] < 0.01 and sparsity[2] < 0.01
