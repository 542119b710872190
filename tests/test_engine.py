"""The training engine: determinism, checkpoint/resume, masks through optimizer steps, metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hypersparse import masks as M
from hypersparse.engine import MaskHooks, Phase, Trainer
from hypersparse.io import safe_torch_load
from hypersparse.runner import execute


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return safe_torch_load(run_dir / "model.pt")


def test_dense_run_writes_contract_files(make_spec, tmp_path):
    spec = make_spec("dense", epochs=2, snapshot_epochs=(1,))
    metrics = execute(spec, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("metrics.json", "model.pt", "history.csv", "spec.json", "snapshot_e1.pt"):
        assert (run / name).is_file(), name
    assert not (run / "ckpt").exists(), "resume state is removed once the run is finished"
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert metrics["status"] == "ok" and metrics["epochs"] == 2
    assert metrics["best_test_acc_selected_on"] == "test"
    assert metrics["best_test_acc"] >= metrics["final_test_acc"]
    assert metrics["sparsity"] == 0.0 and metrics["num_prunable"] > 0
    assert set(metrics["layer_density"]) == {k for k, _ in M.prunable_state_items(_final_state(run))}
    assert metrics["spec"] == spec.to_dict() and "torch" in metrics["versions"]
    lines = (run / "history.csv").read_text().splitlines()
    assert lines[0].startswith("phase,epoch,phase_epoch,lr,train_loss,train_acc,test_loss,test_acc")
    assert len(lines) == 3
    snap = safe_torch_load(run / "snapshot_e1.pt")
    assert set(snap) == {"model", "optimizer", "epoch"} and snap["epoch"] == 1


def test_same_spec_same_numbers(make_spec, tmp_path):
    spec = make_spec("dense", epochs=1)
    a = execute(spec, tmp_path / "a", progress=False)
    b = execute(spec, tmp_path / "b", progress=False)
    assert a["final_test_acc"] == b["final_test_acc"]
    sa, sb = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_is_bit_identical(make_spec, tmp_path):
    """2 epochs straight == 1 epoch + interruption + resume, bit for bit."""
    spec = make_spec("dense", epochs=2)
    straight = execute(spec, tmp_path / "straight", progress=False)

    # Simulate a kill after the first epoch: run a 1-epoch phase of the same name, keep ckpt.
    part = tmp_path / "resumed"
    part.mkdir()
    (part / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")
    t = Trainer(spec, part, progress=False)
    d = spec.dense
    t.fit(Phase("dense", 1, spec.optim.lr, d.milestones, d.gamma, 0))
    ckpt = safe_torch_load(part / "ckpt" / "last.pt")
    ckpt["done"] = {}  # the phase was cut, not finished
    torch.save(ckpt, part / "ckpt" / "last.pt")
    resumed = execute(spec, part, progress=False)

    assert resumed["final_test_acc"] == straight["final_test_acc"]
    sa, sb = _final_state(tmp_path / "straight"), _final_state(part)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (part / "history.csv").read_text().splitlines()[1:] != []
    h1 = [r.split(",")[:8] for r in (tmp_path / "straight" / "history.csv").read_text().splitlines()]
    h2 = [r.split(",")[:8] for r in (part / "history.csv").read_text().splitlines()]
    assert h1 == h2


def test_corrupt_last_checkpoint_falls_back_to_previous(make_spec, tmp_path, caplog):
    spec = make_spec("dense", epochs=3)
    run = tmp_path / "run"
    run.mkdir()
    t = Trainer(spec, run, progress=False)
    t.fit(Phase("dense", 2, spec.optim.lr))
    last = run / "ckpt" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # an interrupted write
    with caplog.at_level("WARNING", logger="hypersparse"):
        t2 = Trainer(spec, run, progress=False)
    assert t2._ckpt is not None and t2._ckpt["epoch"] == 1
    assert any("cannot be loaded safely" in r.message for r in caplog.records)


def test_masks_hold_through_momentum_and_weight_decay(make_spec, tmp_path):
    spec = make_spec("dense", epochs=1)
    run = tmp_path / "run"
    run.mkdir()
    t = Trainer(spec, run, progress=False)
    masks = M.model_masks_by_magnitude(t.model, 0.9)
    # Momentum buffers that are non-zero everywhere before the mask is set: the hardest case.
    hooks = MaskHooks(masks)
    t.fit(Phase("sparse", 2, 0.1), hooks)
    for name, w in M.prunable_named_weights(t.model):
        assert torch.count_nonzero(w[~masks[name]]) == 0, name
    n = M.num_prunable(t.model)
    zeros = sum(int((w == 0).sum()) for w in M.prunable_weights(t.model))
    assert zeros == M.target_zeros(0.9, n)


def test_finished_run_is_not_retrained(make_spec, tmp_path):
    spec = make_spec("dense", epochs=1)
    run = tmp_path / "run"
    execute(spec, run, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    execute(spec, run, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_folder_of_another_spec_is_refused(make_spec, tmp_path):
    from hypersparse.runner import SpecMismatchError

    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.json").write_text(json.dumps(make_spec("dense", epochs=1, seed=1).to_dict()))
    with pytest.raises(SpecMismatchError, match="seed"):
        execute(make_spec("dense", epochs=1), run, progress=False)


def test_divergence_is_recorded_as_failure(make_spec, tmp_path):
    spec = make_spec("dense", epochs=2)
    spec = type(spec).from_dict({**spec.to_dict(), "optim": {**spec.to_dict()["optim"], "lr": 1e12}})
    from hypersparse.engine import DivergenceError

    with pytest.raises(DivergenceError, match="epoch 0"):
        execute(spec, tmp_path / "raise", progress=False)
    m = execute(spec, tmp_path / "rec", progress=False, record_failure=True)
    assert m["status"] == "failed" and "learning rate" in m["error"] and "optim.lr" in m["error"]
    assert "lambda_init" not in m["error"]  # an ART hint belongs to ART runs only
    assert json.loads((tmp_path / "rec" / "metrics.json").read_text())["status"] == "failed"
    for name in ("model.pt", "history.csv", "spec.json"):
        assert (tmp_path / "rec" / name).exists()


# ------------------------------------------------------------------------ torch.compile
def test_compile_modes_are_checked_before_any_work(monkeypatch, tmp_path, make_spec):
    from hypersparse.engine import CompileUnavailableError, compiled_forward

    model = torch.nn.Linear(3, 2)
    assert compiled_forward(model, None, torch.device("cpu")) is model
    with pytest.raises(ValueError, match="reduce-overhead"):
        compiled_forward(model, "fastest", torch.device("cpu"))
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(CompileUnavailableError, match="C\\+\\+ compiler.*compile: false"):
        Trainer(make_spec(), tmp_path / "run", compile_mode="default")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(shutil.which("g++") is None, reason="TorchInductor on CPU needs g++")
def test_compiled_training_matches_eager_and_is_recorded(make_spec, tmp_path):
    """A real torch.compile run (TorchInductor, CPU): same checkpoints layout, numbers equal
    to eager up to float reassociation, and metrics.json says it was compiled."""
    spec = make_spec(epochs=1)
    eager = execute(spec, tmp_path / "eager")
    compiled = execute(spec, tmp_path / "compiled", compile_mode="default")
    assert eager["compile"] is None and compiled["compile"] == "default"
    a = torch.load(tmp_path / "eager" / "model.pt")
    b = torch.load(tmp_path / "compiled" / "model.pt")
    assert a.keys() == b.keys()  # no "_orig_mod." prefixes from the compiled wrapper
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
    assert abs(compiled["final_test_acc"] - eager["final_test_acc"]) < 1.0


def test_a_sparse_run_reads_its_dense_file_once(make_spec, tmp_path, monkeypatch):
    """The runner's check before any work reads the dense model and hands it to the method."""
    from hypersparse import io

    dense = tmp_path / "dense"
    execute(make_spec("dense", epochs=1), dense, progress=False)
    reads = []
    real = io.safe_torch_load

    def counting(path, *a, **kw):
        reads.append(Path(path).name)
        return real(path, *a, **kw)

    import hypersparse.methods.base as base
    import hypersparse.runner as runner

    monkeypatch.setattr(runner, "safe_torch_load", counting)
    monkeypatch.setattr(base, "safe_torch_load", counting)
    m = execute(make_spec("omp", kappa=0.9, epochs=1), tmp_path / "omp", dense, progress=False)
    assert m["status"] == "ok" and reads.count("model.pt") == 2  # the dense one + the saved
    assert not base._CHECKED_DENSE  # nothing kept after the run
