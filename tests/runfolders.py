"""Fabricate hand-made run folders in the real on-disk contract format (see run_folder docs).

Used by the analysis tests (and reusable by others): every file a training run writes -
spec.json, metrics.json, history.csv, model.pt (a real, exactly pruned state dict of a small
model from hypersparse.models), and for ART runs art_trace.csv / art_trace.npz - with
numbers chosen by the caller so aggregation can be checked by hand.

    from runfolders import make_run, make_grid
    make_run(tmp_path / "runs", method="art_hs", kappa=0.9, seed=1, final_test_acc=91.0)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hypersparse.masks import magnitude_masks, prunable_state_items, sparsity_report, target_zeros

ART_METHODS = ("art_hs", "art_l1", "art_l2")


def kappa_tag(kappa: float) -> str:
    """Folder tag of a pruning rate (k0, k0.9, k0.995), as training writes it."""
    return "k0" if kappa == 0 else f"k{float(kappa)!r}"


def run_dir_for(root: Path, dataset: str, model: str, method: str, kappa: float, seed: int) -> Path:
    """results/runs/{dataset}/{model}/{method}/k{kappa}/seed{seed}."""
    return Path(root) / dataset / model / method / kappa_tag(kappa) / f"seed{seed}"


class _TinyNet(nn.Module):
    """Fallback model with ResNet-like names (stem conv, layer1, layer2, fc)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, num_classes)


def _seed_of(*parts: Any) -> int:
    """A stable integer seed from arbitrary parts (process-independent)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def fabricate_state(
    model: str,
    method: str,
    kappa: float,
    seed: int,
    *,
    num_classes: int = 10,
    width: float = 0.25,
    sparsity_miss: int = 0,
) -> dict[str, torch.Tensor]:
    """A real model state dict, magnitude-pruned to exactly floor(kappa*N) zeros.

    ``sparsity_miss`` > 0 leaves that many of the pruned weights non-zero, so the run misses
    its target (num_zero = target_zeros - sparsity_miss). Each method gets its own 3x3 kernel
    emphasis, so kernel-pattern figures differ between methods.
    """
    torch.manual_seed(seed)
    try:
        from hypersparse.models import build_model

        net = build_model(model, num_classes, width=width)
    except (ImportError, ValueError):
        net = _TinyNet(num_classes)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    gen = np.random.default_rng(_seed_of(method))
    emphasis = torch.tensor(1.0 + 2.0 * gen.random((3, 3)), dtype=torch.float32)
    items = prunable_state_items(state)
    for k, v in items:
        if v.dim() == 4 and tuple(v.shape[-2:]) == (3, 3):
            state[k] = v * emphasis
    if kappa > 0:
        items = prunable_state_items(state)
        masks = magnitude_masks(items, kappa)
        missed = 0
        for k, v in items:
            m = masks[k]
            w = v * m
            if missed < sparsity_miss:
                flat_w, flat_m = w.view(-1), m.view(-1)
                idx = torch.nonzero(~flat_m).view(-1)[: sparsity_miss - missed]
                flat_w[idx] = 1e-4
                missed += idx.numel()
            state[k] = w
    return state


def _history(phases: list[tuple[str, int]], final_test_acc: float, kappa: float) -> list[dict]:
    """Plausible per-epoch history rows ending at ``final_test_acc``."""
    rows, epoch = [], 0
    total = sum(n for _, n in phases)
    for phase, n in phases:
        for pe in range(n):
            frac = (epoch + 1) / total
            rows.append(
                {
                    "phase": phase,
                    "epoch": epoch,
                    "phase_epoch": pe,
                    "lr": 0.1 if frac < 0.8 else 0.01,
                    "train_loss": round(2.3 * (1 - frac) + 0.05, 4),
                    "train_acc": round(min(100.0, final_test_acc * frac + 5), 3),
                    "test_loss": round(2.3 * (1 - frac) + 0.2, 4),
                    "test_acc": round(final_test_acc * (0.5 + 0.5 * frac), 3),
                    "sparsity": kappa if phase in ("finetune", "sparse") else 0.0,
                    "seconds": 1.0,
                }
            )
            epoch += 1
    rows[-1]["test_acc"] = final_test_acc
    return rows


def _write_art_trace(
    run_dir: Path,
    state: dict[str, torch.Tensor],
    kappa: float,
    warmup: int,
    n_art: int,
    method: str,
    seed: int,
    with_top: bool = True,
) -> dict[str, Any]:
    """art_trace.csv + art_trace.npz for an ART run; returns the metrics 'art' block."""
    gen = np.random.default_rng(_seed_of(method, seed, kappa))
    epochs = np.arange(warmup, warmup + n_art)
    alpha = 5e-6 * 1.05 ** np.arange(n_art)
    dense_acc = 90.0 + np.linspace(0, 3, n_art)
    pruned_acc = np.linspace(40.0, 96.0, n_art) + gen.normal(0, 1, n_art)
    window = np.array([pruned_acc[max(0, i - 2) : i + 1].mean() for i in range(n_art)])
    candidate = np.maximum(epochs - 1, epochs[0])
    entered = np.round(5000 * np.exp(-np.arange(n_art) / 1.5)).astype(int)
    left = np.round(entered * 0.8).astype(int)
    entered[-1], left[-1] = 0, 0  # converged: the top set no longer changes
    iou = np.linspace(0.35, 1.0, n_art)
    with open(run_dir / "art_trace.csv", "w", encoding="utf-8") as fh:
        fh.write(
            "epoch,art_epoch,alpha,dense_train_acc,pruned_train_acc,window_mean,"
            "candidate_epoch,entered,left,iou_final\n"
        )
        for i in range(n_art):
            fh.write(
                f"{epochs[i]},{i},{float(alpha[i])!r},{dense_acc[i]:.3f},{pruned_acc[i]:.3f},"
                f"{window[i]:.3f},{candidate[i]},{entered[i]},{left[i]},{iou[i]:.4f}\n"
            )
    q = np.linspace(0.5, 1.0, 101)
    mag = np.empty((n_art, q.size))
    grad = np.empty_like(mag)
    for i in range(n_art):
        sep = 1.0 + 1.5 * i / max(1, n_art - 1) * (q > kappa)  # top weights grow during ART
        mag[i] = -np.log1p(-0.999 * q) * 0.01 * sep
        a_k = np.interp(kappa, q, mag[i])
        s = 0.6585 / a_k
        grad[i] = s / np.cosh(s * mag[i]) ** 2 * 0.02
    layer_names = np.array([k for k, _ in prunable_state_items(state)])
    mq = np.linspace(0.0, 1.0, 201)
    before = -np.log1p(-0.999 * mq) * 0.01
    term = before * (1.0 + 1.5 * (mq > kappa))
    final = np.where(mq < kappa, 0.0, term * 1.1)
    selected = int(candidate[-1])
    terminated = int(epochs[-1])
    tq = kappa + (1.0 - kappa) * np.linspace(0.0, 1.0, 64)
    top_before = -np.log1p(-0.999 * tq) * 0.01
    top = {} if not with_top else {
        "top_quantiles": tq,
        "magnitudes_top_before": top_before,
        "magnitudes_top_termination": top_before * 2.5,
        "magnitudes_top_final": top_before * 2.75,
    }
    np.savez(
        run_dir / "art_trace.npz",
        epochs=epochs,
        quantiles=q,
        grad_at_quantile=grad,
        magnitude_at_quantile=mag,
        layer_names=layer_names,
        layer_top_fraction=gen.random((n_art, layer_names.size)),
        mag_quantiles=mq,
        magnitudes_before=before,
        magnitudes_termination=term,
        magnitudes_final=final,
        kappa=np.float64(kappa),
        selected_epoch=np.int64(selected),
        terminated_epoch=np.int64(terminated),
        **top,
    )
    return {
        "epochs_used": n_art,
        "selected_epoch": selected,
        "terminated_epoch": terminated,
        "alpha_at_selection": float(alpha[selected - warmup]),
        "converged": True,
        "dense_train_acc_at_termination": float(dense_acc[-1]),
    }


def make_run(
    root: Path,
    *,
    dataset: str = "digits",
    model: str = "resnet8",
    method: str = "dense",
    kappa: float = 0.0,
    seed: int = 0,
    status: str = "ok",
    final_test_acc: float = 90.0,
    best_test_acc: float | None = None,
    sparsity_miss: int = 0,
    error: str | None = None,
    warmup: int = 3,
    n_art: int = 5,
    finetune: int = 4,
    width: float = 0.25,
    num_classes: int = 10,
    with_model: bool = True,
    with_top: bool = True,
    with_flops: bool = True,
) -> Path:
    """Write one complete run folder and return it (``status='failed'``: a failed run)."""
    d = run_dir_for(root, dataset, model, method, kappa, seed)
    d.mkdir(parents=True, exist_ok=True)
    family = "art" if method.startswith("art") else method
    spec = {
        "dataset": dataset,
        "model": model,
        "method": method,
        "family": family,
        "kappa": kappa,
        "seed": seed,
        "width": width,
    }
    (d / "spec.json").write_text(json.dumps(spec, indent=2))
    base = {
        "dataset": dataset,
        "model": model,
        "method": method,
        "method_family": family,
        "kappa": kappa,
        "seed": seed,
    }
    if status != "ok":
        metrics = {"status": "failed", "error": error or "loss diverged (NaN) at epoch 2", **base}
        (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return d
    best = final_test_acc + 0.5 if best_test_acc is None else best_test_acc
    state = fabricate_state(
        model,
        method,
        kappa,
        seed,
        num_classes=num_classes,
        width=width,
        sparsity_miss=sparsity_miss,
    )
    rep = sparsity_report(state)
    tz = target_zeros(kappa, rep["num_prunable"])
    art_block = None
    if family == "art":
        phases = [("dense", warmup), ("art", n_art), ("finetune", finetune)]
        art_block = _write_art_trace(d, state, kappa, warmup, n_art, method, seed, with_top)
    elif method == "dense":
        phases = [("dense", warmup + finetune)]
    else:
        phases = [("finetune", warmup + finetune)]
    hist = _history(phases, final_test_acc, kappa)
    cols = list(hist[0])
    lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in hist]
    (d / "history.csv").write_text("\n".join(lines) + "\n")
    if with_model:
        torch.save(state, d / "model.pt")
    metrics: dict[str, Any] = {
        "status": "ok",
        "error": None,
        **base,
        "final_test_acc": final_test_acc,
        "best_test_acc": best,
        "best_epoch": len(hist) - 2,
        "best_test_acc_selected_on": "test",
        "final_train_acc": min(100.0, final_test_acc + 6),
        "sparsity": rep["sparsity"],
        "num_prunable": rep["num_prunable"],
        "num_zero": rep["num_zero"],
        "target_zeros": tz,
        "sparsity_ok": rep["num_zero"] == tz,
        "layer_density": rep["layer_density"],
        "layer_size": rep["layer_size"],
        "disconnected_layers": rep["disconnected_layers"],
        "epochs": len(hist),
        "wall_time_s": 1.0 * len(hist),
        "device": "cpu",
        "spec": spec,
        "versions": {"torch": torch.__version__},
        "git_commit": None,
    }
    if art_block is not None:
        metrics["art"] = art_block
    if with_flops:  # per phase: dense epochs at density 1, fine-tuning at the final density
        density = 1.0 - rep["sparsity"]
        dense_ref = warmup + finetune
        train = sum(n * (density if ph == "finetune" else 1.0) for ph, n in phases)
        if method not in ("dense",) and family != "art":
            train += dense_ref  # pruning after a whole dense run
        metrics["flops"] = {
            "inference_dense": 1.0e6,
            "inference": 1.0e6 * density,
            "inference_ratio": density,
            "train": 3.0e6 * train,
            "train_dense": 3.0e6 * dense_ref,
            "train_ratio": train / dense_ref,
        }
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return d


def make_unfinished(root: Path, **kw: Any) -> Path:
    """A run folder without metrics.json (still training): analysis must skip it."""
    d = run_dir_for(
        root,
        kw.get("dataset", "digits"),
        kw.get("model", "resnet8"),
        kw.get("method", "omp"),
        kw.get("kappa", 0.9),
        kw.get("seed", 0),
    )
    d.mkdir(parents=True, exist_ok=True)
    (d / "spec.json").write_text("{}")
    (d / "history.csv").write_text("phase,epoch\n")
    return d


# Accuracy model for the grid: methods lose accuracy as kappa grows, ART least.
_DROP = {
    "art_hs": 10.0,
    "art_l1": 18.0,
    "art_l2": 22.0,
    "omp": 15.0,
    "snip": 25.0,
    "random": 35.0,
    "my_method": 20.0,
}


def grid_acc(method: str, kappa: float, seed: int, dense: float = 94.0) -> float:
    """Deterministic fabricated accuracy for (method, kappa, seed)."""
    if kappa == 0:
        return dense + 0.3 * seed
    drop = _DROP.get(method, 20.0) * kappa**8 + 1.0 * kappa
    return round(dense - drop + 0.4 * seed - 0.2 * (seed % 2), 3)


def make_grid(
    root: Path,
    *,
    dataset: str = "digits",
    model: str = "resnet8",
    methods: tuple[str, ...] = ("art_hs", "art_l1", "art_l2", "omp", "snip", "my_method"),
    kappas: tuple[float, ...] = (0.5, 0.9, 0.98),
    seeds: tuple[int, ...] = (0, 1),
) -> list[Path]:
    """A small complete grid: dense (k0) plus every method x kappa x seed."""
    out = [
        make_run(
            root,
            dataset=dataset,
            model=model,
            method="dense",
            kappa=0.0,
            seed=s,
            final_test_acc=grid_acc("dense", 0, s),
        )
        for s in seeds
    ]
    for m in methods:
        for k in kappas:
            for s in seeds:
                out.append(
                    make_run(
                        root,
                        dataset=dataset,
                        model=model,
                        method=m,
                        kappa=k,
                        seed=s,
                        final_test_acc=grid_acc(m, k, s),
                    )
                )
    return out


def _main() -> None:
    """python tests/runfolders.py OUT: write a demo grid (for looking at figures by hand)."""
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/fake_runs")
    make_grid(root)
    print(f"wrote fabricated runs under {root}")


if __name__ == "__main__":
    _main()


__all__ = [
    "ART_METHODS",
    "fabricate_state",
    "grid_acc",
    "kappa_tag",
    "make_grid",
    "make_run",
    "make_unfinished",
    "run_dir_for",
]
