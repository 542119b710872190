"""ART: alpha schedule, window selection/termination, exact pruning, trace files, resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hypersparse import masks as M
from hypersparse.io import safe_torch_load
from hypersparse.methods import ParamError, build_params, get_method
from hypersparse.methods.art import ArtParams, ArtSelector, alpha_at
from hypersparse.methods.art_trace import CSV_COLUMNS, GRAD_QUANTILES, MAG_QUANTILES
from hypersparse.runner import execute
from hypersparse.spec import RunSpec

NPZ_FIELDS = {
    "epochs", "quantiles", "grad_at_quantile", "magnitude_at_quantile", "layer_names",
    "layer_top_fraction", "mag_quantiles", "magnitudes_before", "magnitudes_termination",
    "magnitudes_final", "kappa", "selected_epoch", "terminated_epoch", "top_quantiles",
    "magnitudes_top_before", "magnitudes_top_termination", "magnitudes_top_final",
}


# ---------------------------------------------------------------------------- pure logic
def test_alpha_schedule_grows_geometrically_from_warmup():
    p = ArtParams(lambda_init=1e-3, eta=2.0, warmup_epochs=5)
    assert alpha_at(p, 5) == pytest.approx(1e-3)
    assert alpha_at(p, 6) == pytest.approx(2e-3)
    assert alpha_at(p, 8) == pytest.approx(8e-3)
    ref = ArtParams()
    assert alpha_at(ref, 60) == pytest.approx(5e-6)
    assert alpha_at(ref, 70) == pytest.approx(5e-6 * 1.05**10)


def test_params_defaults_inputs_and_validation():
    p = build_params("art", {})
    assert (p.regularizer, p.lambda_init, p.eta, p.warmup_epochs, p.window_half) == (
        "hs", 5e-6, 1.05, 60, 1,
    )
    cls = get_method("art")
    assert cls.dense_inputs(p) == ["snapshot_e60.pt"] and cls.snapshot_epochs(p) == [60]
    for bad in ({"eta": 0.9}, {"lambda_init": -1.0}, {"regularizer": "l3"},
                {"max_art_epochs": 0}, {"window_half": -1}, {"select_against": "x"}):
        with pytest.raises(ParamError):
            build_params("art", bad)


def test_selector_code_semantics_compares_with_candidate_accuracy():
    s = ArtSelector(window_half=1)  # the authors' code
    assert s.push(0, 50.0)["epoch"] == 0  # fewer than 3 entries: the newest
    c = s.push(1, 60.0)
    assert (c["epoch"], c["acc"], c["window_mean"]) == (1, 60.0, 55.0)
    assert s.push(2, 58.0)["epoch"] == 1  # mean 56 is not > candidate's own 60
    assert s.push(3, 59.0)["epoch"] == 1  # mean 59 neither
    assert s.window == [(1, 60.0), (2, 58.0), (3, 59.0)]
    assert s.should_stop(54.9) and not s.should_stop(55.0)  # candidate's window mean 55
    assert s.needed_epochs() == {1, 2, 3}


def test_selector_paper_reading_compares_with_best_window_mean():
    s = ArtSelector(window_half=1, select_against="best_mean", stop_on="candidate_acc")
    for e, a in enumerate([50.0, 60.0, 58.0, 59.0]):
        c = s.push(e, a)
    assert (c["epoch"], c["acc"], c["window_mean"]) == (2, 58.0, 59.0)
    assert s.should_stop(57.9) and not s.should_stop(58.0)


def test_selector_wide_window_middle_and_state_roundtrip():
    s = ArtSelector(window_half=2)
    picks = [s.push(e, a)["epoch"] for e, a in enumerate([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])]
    # middle index min(len-1, 2): e1 (mean 15 > 10), e2 (25 > 20), e3 (40 > 30)
    assert picks == [0, 1, 1, 2, 2, 3]
    assert len(s.window) == 5 and s.window_mean == pytest.approx(40.0)
    t = ArtSelector(window_half=2)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert t.window == s.window and t.candidate == s.candidate
    assert s.push(6, 0.0) == t.push(6, 0.0)


def test_selector_no_candidate_never_stops():
    s = ArtSelector()
    assert s.push(0, 0.0) is None and not s.should_stop(0.0)
    assert s.needed_epochs() == {0}  # the newest stays available as the fallback candidate


def test_art_step_adds_alpha_times_the_chosen_regularizer_gradient(tmp_path):
    """Engine order: CE backward (+ loss_term), then before_step; HS arrives in before_step."""
    from hypersparse.methods.art import ArtHooks
    from hypersparse.models import build_model
    from hypersparse.regularizers import REGULARIZERS

    torch.manual_seed(0)
    model = build_model("resnet8", 10, in_channels=1, width=0.25)

    class FakeTrainer:  # the hooks read the global epoch, the model and per-epoch scalars
        epoch = 3
        step_mode = "off"

        @staticmethod
        def scalar(name: str, value: float) -> float:
            return value

    FakeTrainer.model = model
    ws = M.prunable_weights(model)
    x = torch.randn(8, 1, 16, 16)
    for name in ("hs", "l1", "l2"):
        p = ArtParams(regularizer=name, lambda_init=0.5, eta=2.0, warmup_epochs=1)
        hooks = ArtHooks(p, 0.9, tmp_path)
        hooks.on_epoch_start(FakeTrainer())  # type: ignore[arg-type]
        model.zero_grad(set_to_none=True)
        ce = model(x).logsumexp(1).mean()
        ce_grads = torch.autograd.grad(ce, ws, retain_graph=True)
        extra = hooks.loss_term(FakeTrainer(), model)  # type: ignore[arg-type]
        assert (extra is None) == (name == "hs")
        (ce if extra is None else ce + extra).backward()
        hooks.before_step(FakeTrainer())  # type: ignore[arg-type]
        want = torch.autograd.grad(REGULARIZERS[name](ws, 0.9), ws)
        for w, g0, r in zip(ws, ce_grads, want, strict=True):
            torch.testing.assert_close(w.grad, g0 + 2.0 * r, rtol=1e-5, atol=1e-7)
        assert any(float(r.abs().max()) > 0 for r in want)


# ---------------------------------------------------------------------------- end to end
def _spec(root: Path, family: str, *, kappa: float = 0.0, params: dict | None = None,
          epochs: int = 2, finetune_epochs: int = 1, label: str | None = None,
          snapshot_epochs: tuple[int, ...] = ()) -> RunSpec:
    """Same tiny digits spec as conftest's make_spec (resnet8 at width 0.25, 16 px)."""
    return RunSpec.from_dict({
        "dataset": "digits", "model": "resnet8", "method": label or family, "family": family,
        "kappa": kappa, "seed": 0, "width": 0.25, "image_size": 16, "data_root": str(root),
        "device": "cpu", "optim": {"batch_size": 128, "lr": 0.05},
        "dense": {"epochs": epochs, "milestones": [], "gamma": 0.1},
        "finetune": {"epochs": finetune_epochs, "milestones": [], "gamma": 0.1},
        "params": params or {}, "snapshot_epochs": list(snapshot_epochs),
    })


@pytest.fixture(scope="module")
def warm(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, a finished 2-epoch dense run with snapshot_e1.pt), shared by this module."""
    out = tmp_path_factory.mktemp("art_dense") / "dense"
    execute(_spec(digits_root, "dense", snapshot_epochs=(1,)), out, progress=False)
    return digits_root, out


def _art_spec(root: Path, *, kappa=0.9, finetune_epochs=1, label="art_hs", **params) -> RunSpec:
    base = {"warmup_epochs": 1, "lambda_init": 1e-4, "eta": 2.0, "max_art_epochs": 3}
    base.update(params)
    return _spec(root, "art", kappa=kappa, params=base, finetune_epochs=finetune_epochs,
                 label=label)


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_art_end_to_end_contract(warm, tmp_path):
    root, dense = warm
    spec = _art_spec(root, finetune_epochs=2)
    run = tmp_path / "art"
    metrics = execute(spec, run, dense, progress=False)
    art = metrics["art"]
    assert metrics["status"] == "ok" and metrics["sparsity_ok"] is True
    state = safe_torch_load(run / "model.pt")
    rep = M.sparsity_report(state)
    assert rep["num_zero"] == M.target_zeros(0.9, rep["num_prunable"])
    # ART starts at the warm-up epoch; fine-tuning keeps exactly the same zeros every epoch
    hist = _history(run)
    art_rows = [r for r in hist if r["phase"] == "art"]
    ft_rows = [r for r in hist if r["phase"] == "finetune"]
    assert int(art_rows[0]["epoch"]) == 1 and len(art_rows) == art["epochs_used"]
    assert all(float(r["lr"]) == spec.optim.lr for r in art_rows)
    assert len(ft_rows) == 2
    assert all(float(r["sparsity"]) == rep["sparsity"] for r in ft_rows)
    assert set(art) >= {
        "epochs_used", "selected_epoch", "terminated_epoch", "alpha_at_selection", "converged",
        "dense_train_acc_at_termination", "regularizer", "window_mean_at_selection",
    }
    assert art["regularizer"] == "hs"
    assert 1 <= art["selected_epoch"] <= art["terminated_epoch"] == 1 + art["epochs_used"] - 1
    assert art["alpha_at_selection"] == pytest.approx(1e-4 * 2.0 ** (art["selected_epoch"] - 1))
    if art["epochs_used"] < 3:
        assert art["converged"] is True  # only the termination rule ends ART early
    # trace files
    with open(run / "art_trace.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == art["epochs_used"]
    n = rep["num_prunable"]
    for r in rows:
        assert int(r["entered"]) == int(r["left"]) and 0 <= int(r["entered"]) <= n
        assert 0.0 <= float(r["iou_final"]) <= 1.0
    sel_row = next(r for r in rows if int(r["epoch"]) == art["selected_epoch"])
    assert float(sel_row["iou_final"]) == 1.0  # the fine-tuned mask is the selected top set
    assert float(rows[-1]["window_mean"]) == pytest.approx(
        np.mean([float(r["pruned_train_acc"]) for r in rows[-3:]])
    )
    with np.load(run / "art_trace.npz", allow_pickle=False) as z:
        assert set(z.files) == NPZ_FIELDS
        e, q, m = art["epochs_used"], len(GRAD_QUANTILES), len(MAG_QUANTILES)
        nl = len(z["layer_names"])
        assert nl == len(rep["layer_size"]) and z["layer_names"].dtype.kind == "U"
        assert z["grad_at_quantile"].shape == (e, q) == z["magnitude_at_quantile"].shape
        assert z["layer_top_fraction"].shape == (e, nl)
        assert z["quantiles"][0] == 0.5 and z["quantiles"][-1] == 1.0
        for k in ("magnitudes_before", "magnitudes_termination", "magnitudes_final"):
            assert z[k].shape == (m,) and np.all(np.isfinite(z[k])) and np.all(np.diff(z[k]) >= 0)
        assert z["top_quantiles"][0] == pytest.approx(0.9) and z["top_quantiles"][-1] == 1.0
        for k in ("magnitudes_top_before", "magnitudes_top_termination", "magnitudes_top_final"):
            t = z[k]
            assert t.shape == z["top_quantiles"].shape and np.all(np.diff(t) >= 0)
            assert np.all(np.isfinite(t)) and t[-1] == z[k.replace("_top", "")][-1]
        # the kept weights after fine-tuning are (almost all) non-zero
        assert z["magnitudes_top_final"][1] > 0
        # the final model has kappa*N zeros: the lower 90% of its sorted |w| are zero
        assert z["magnitudes_final"][int(0.85 * m)] == 0.0 and z["magnitudes_final"][-1] > 0
        assert np.all(np.diff(z["magnitude_at_quantile"], axis=1) >= 0)
        assert np.all(z["grad_at_quantile"] >= 0) and np.all(np.isfinite(z["grad_at_quantile"]))
        assert int(z["selected_epoch"]) == art["selected_epoch"]
        assert int(z["terminated_epoch"]) == art["terminated_epoch"]
        assert float(z["kappa"]) == 0.9
        # per epoch the top set holds 10% of all weights
        sizes = np.array(list(rep["layer_size"].values()))
        assert np.allclose(z["layer_top_fraction"] @ sizes, n - M.target_zeros(0.9, n))
    for leftover in ("art_candidate.pt", "art_work", "ckpt"):
        assert not (run / leftover).exists()


def test_max_art_epochs_guard_reports_not_converged(warm, tmp_path):
    root, dense = warm
    # 99% pruned after 1 epoch never beats the dense training accuracy: the guard ends ART
    spec = _art_spec(root, kappa=0.99, max_art_epochs=1, lambda_init=0.0)
    metrics = execute(spec, tmp_path / "art", dense, progress=False)
    art = metrics["art"]
    assert art["converged"] is False and art["epochs_used"] == 1
    assert art["selected_epoch"] == art["terminated_epoch"] == 1
    assert metrics["sparsity_ok"] is True


@pytest.mark.parametrize("reg", ["l1", "l2"])
def test_l1_l2_share_the_pipeline(warm, tmp_path, reg):
    root, dense = warm
    spec = _art_spec(root, regularizer=reg, max_art_epochs=1, label=f"art_{reg}")
    metrics = execute(spec, tmp_path / reg, dense, progress=False)
    assert metrics["art"]["regularizer"] == reg and metrics["sparsity_ok"] is True
    assert (tmp_path / reg / "art_trace.npz").is_file()


def _interrupt_at(monkeypatch, target, name, after_calls):
    """Make ``target.name`` raise on its call number ``after_calls + 1`` (a simulated kill)."""
    orig = getattr(target, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise KeyboardInterrupt("simulated kill")
        return orig(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


def _same_run(a: Path, b: Path, ma: dict, mb: dict) -> None:
    for k in ("final_test_acc", "best_test_acc", "final_train_acc", "art", "num_zero"):
        assert ma[k] == mb[k], k
    sa, sb = safe_torch_load(a / "model.pt"), safe_torch_load(b / "model.pt")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (a / "art_trace.csv").read_text() == (b / "art_trace.csv").read_text()
    with np.load(a / "art_trace.npz") as za, np.load(b / "art_trace.npz") as zb:
        assert all(np.array_equal(za[k], zb[k]) for k in za.files)


@pytest.mark.slow
def test_resume_mid_art_and_between_phases_is_identical(warm, tmp_path, monkeypatch):
    from hypersparse import hs_select
    from hypersparse.methods.art import AdaptiveRegularizedTraining, ArtHooks

    # Small limits, so that these few thousand weights take the chunked path with the
    # previous-a_k bracket too (state that a resumed run does not have at its first step).
    monkeypatch.setattr(hs_select, "SMALL_N", 500)
    monkeypatch.setattr(hs_select, "CPU_CHUNK", 1024)
    monkeypatch.setattr(hs_select, "SAMPLE", 256)
    root, dense = warm
    spec = _art_spec(root, kappa=0.95, max_art_epochs=3, finetune_epochs=2)
    straight = execute(spec, tmp_path / "straight", dense, progress=False)
    assert straight["art"]["epochs_used"] >= 2

    # killed during ART epoch 2 (its end_epoch), so the checkpoint is after ART epoch 1
    run = tmp_path / "mid"
    with monkeypatch.context() as mp:
        _interrupt_at(mp, ArtHooks, "end_epoch", 1)
        with pytest.raises(KeyboardInterrupt):
            execute(spec, run, dense, progress=False)
    assert (run / "ckpt" / "last.pt").exists() and not (run / "metrics.json").exists()
    _same_run(tmp_path / "straight", run, straight, execute(spec, run, dense, progress=False))

    # killed after ART finished, before fine-tuning started: the checkpoint carries the
    # candidate and the trace; nothing of it is in the run folder's declared outputs
    run = tmp_path / "between"
    with monkeypatch.context() as mp:
        _interrupt_at(mp, AdaptiveRegularizedTraining, "train_with_mask", 0)
        with pytest.raises(KeyboardInterrupt):
            execute(spec, run, dense, progress=False)
    assert (run / "ckpt" / "last.pt").exists()
    assert not any((run / f).exists() for f in ("art_trace.npz", "art_trace.csv", "model.pt"))
    _same_run(tmp_path / "straight", run, straight, execute(spec, run, dense, progress=False))

    # killed during fine-tuning, then the workflow deletes the job's declared outputs before
    # rerunning it (Snakemake does that for an incomplete job): the run still finishes
    from hypersparse.engine import Trainer

    run = tmp_path / "finetune"
    with monkeypatch.context() as mp:
        _interrupt_at(mp, Trainer, "_train_epoch", straight["art"]["epochs_used"] + 1)
        with pytest.raises(KeyboardInterrupt):
            execute(spec, run, dense, progress=False)
    for name in ("art_trace.csv", "art_trace.npz", "history.csv", "spec.json", "model.pt"):
        (run / name).unlink(missing_ok=True)
    again = execute(spec, run, dense, progress=False)
    _same_run(tmp_path / "straight", run, straight, again)


def test_failure_outputs_exist_after_divergence(warm, tmp_path):
    root, dense = warm
    spec = _art_spec(root, regularizer="l2", lambda_init=1e12, max_art_epochs=2)
    metrics = execute(spec, tmp_path / "div", dense, progress=False, record_failure=True)
    assert metrics["status"] == "failed"
    assert "phase 'art'" in metrics["error"] and "(lambda_init, eta)" in metrics["error"]
    with np.load(tmp_path / "div" / "art_trace.npz", allow_pickle=False) as z:
        assert set(z.files) == NPZ_FIELDS and z["grad_at_quantile"].shape[1] == len(GRAD_QUANTILES)
    header = (tmp_path / "div" / "art_trace.csv").read_text().splitlines()[0]
    assert header == ",".join(CSV_COLUMNS)
    assert not (tmp_path / "div" / "art_work").exists()
    assert not (tmp_path / "div" / "art_candidate.pt").exists()


def test_failure_outputs_without_any_epoch(digits_root, tmp_path):
    from hypersparse.methods.art import AdaptiveRegularizedTraining

    spec = _art_spec(digits_root)
    method = AdaptiveRegularizedTraining(spec, build_params("art", spec.params))
    method.write_failure_outputs(tmp_path)
    with np.load(tmp_path / "art_trace.npz", allow_pickle=False) as z:
        assert set(z.files) == NPZ_FIELDS
        assert z["grad_at_quantile"].shape == (0, len(GRAD_QUANTILES))
        assert z["epochs"].shape == (0,) and int(z["selected_epoch"]) == -1
        assert math.isnan(float(z["magnitudes_final"][0]))
    assert (tmp_path / "art_trace.csv").read_text() == ",".join(CSV_COLUMNS) + "\n"
