"""Exported results: the mask in safetensors, ONNX and a sparse state dict, each loaded back
and checked against the PyTorch model's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hypersparse.cli import main
from hypersparse.export import MASK_FILE, load_run_model, read_mask
from hypersparse.io import safe_torch_load
from hypersparse.runner import execute


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, digits_root):
    from hypersparse.spec import RunSpec

    base = tmp_path_factory.mktemp("export")

    def spec(family, kappa):
        return RunSpec.from_dict({
            "dataset": "digits", "model": "resnet8", "method": family, "family": family,
            "kappa": kappa, "width": 0.25, "image_size": 16, "data_root": str(digits_root),
            "device": "cpu", "optim": {"batch_size": 128, "lr": 0.05},
            "dense": {"epochs": 1, "milestones": [], "gamma": 0.1},
            "finetune": {"epochs": 1, "milestones": [], "gamma": 0.1}})

    execute(spec("dense", 0.0), base / "dense", progress=False)
    execute(spec("omp", 0.9), base / "omp", base / "dense", progress=False)
    return base / "omp"


def test_pruned_runs_write_their_mask(pruned_run):
    masks = read_mask(pruned_run / MASK_FILE)
    state = safe_torch_load(pruned_run / "model.pt")
    assert masks and all(m.dtype == torch.bool for m in masks.values())
    for k, m in masks.items():
        assert torch.equal(m, state[k] != 0)
    n = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == int(0.9 * n)
    assert not (pruned_run.parent / "dense" / MASK_FILE).exists()


def test_onnx_and_sparse_state_reproduce_the_model(pruned_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    onnx_path, sparse_path = tmp_path / "m.onnx", tmp_path / "m.pt"
    assert main(["export", str(pruned_run), "--onnx", str(onnx_path), "--sparse",
                 str(sparse_path)]) == 0
    model, _ = load_run_model(pruned_run)
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        want = model(x).numpy()
    session = ort.InferenceSession(str(onnx_path))
    got = session.run(None, {"images": x.numpy()})[0]
    assert np.allclose(got, want, atol=1e-5)
    sparse = torch.load(sparse_path, weights_only=True)
    assert any(v.is_sparse for v in sparse.values())
    model2, _ = load_run_model(pruned_run)
    model2.load_state_dict({k: (v.to_dense() if v.is_sparse else v) for k, v in sparse.items()})
    with torch.no_grad():
        assert torch.equal(model2(x), model(x))


def test_export_of_a_folder_without_a_finished_run_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "holds no finished run" in err and not (tmp_path / "m.onnx").exists()
