"""The ART trace: per-epoch records of how weight magnitudes and the top-(1-kappa) set evolve.

Written into the run folder as ``art_trace.csv`` and ``art_trace.npz`` (format: the run-folder
contract, README "Run folders"). It feeds the paper's figures: the HyperSparse gradient against
the weight's rank, the sorted magnitudes, and exploration -> exploitation of the top set.

Per epoch the cost is one sort of |w| (not per step), one closed-form HyperSparse gradient and
one packed bit set of the top weights written to ``ckpt/art_work/`` (for IoU with the final
mask, which is only known when ART ends); it goes with ``ckpt/`` when the run ends.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import masks as mask_ops
from ..io import atomic_torch_save, atomic_write, atomic_write_csv, safe_torch_load
from ..regularizers import hypersparse_grad

GRAD_QUANTILES = np.linspace(0.5, 1.0, 512)  # relative ranks in ascending sorted |w|
MAG_QUANTILES = np.linspace(0.0, 1.0, 1024)
TOP_POINTS = 256  # ranks sampled within the kept top (1 - kappa) fraction


def top_quantiles(kappa: float) -> np.ndarray:
    """Relative ranks from kappa to 1: the weights that survive pruning, densely sampled."""
    return kappa + (1.0 - kappa) * np.linspace(0.0, 1.0, TOP_POINTS)
CSV_COLUMNS = (
    "epoch",
    "art_epoch",
    "alpha",
    "dense_train_acc",
    "pruned_train_acc",
    "window_mean",
    "candidate_epoch",
    "entered",
    "left",
    "iou_final",
)
WORK_DIR = "art_work"


def rank_indices(quantiles: np.ndarray, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Index into an ascending sort of n values for each relative rank q: round(q * (n - 1))."""
    idx = np.rint(np.asarray(quantiles, dtype=np.float64) * (n - 1)).astype(np.int64)
    return torch.as_tensor(np.clip(idx, 0, n - 1), device=device)


@torch.no_grad()
def magnitudes_at(weights: list[torch.Tensor], *quantiles: np.ndarray) -> list[np.ndarray]:
    """Sorted |w| (all prunable weights, zeros included) at each given set of relative ranks,
    from one sort."""
    flat = mask_ops.flat_abs(weights)
    vals = torch.sort(flat).values
    return [vals[rank_indices(q, flat.numel(), flat.device)].double().cpu().numpy()
            for q in quantiles]


def flat_mask(masks: mask_ops.Masks, names: list[str]) -> torch.Tensor:
    """Concatenate per-layer masks (in prunable order) into one flat bool vector on the CPU."""
    return torch.cat([masks[n].reshape(-1).to("cpu", torch.bool) for n in names])


def pack(mask: torch.Tensor) -> torch.Tensor:
    """A flat bool mask as packed bits (uint8, N/8 bytes)."""
    return torch.from_numpy(np.packbits(mask.numpy().astype(np.uint8)))


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`."""
    return torch.from_numpy(np.unpackbits(packed.numpy())[:n].astype(bool))


class ArtTrace:
    """Collects one trace row per ART epoch; its state is checkpointed with the ART hooks."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []  # CSV fields (iou_final filled in at the end)
        self.grad_q: list[torch.Tensor] = []  # [Q] float64 each
        self.mag_q: list[torch.Tensor] = []  # [Q]
        self.mag_full: list[torch.Tensor] = []  # [M] per epoch, for magnitudes_termination
        self.layer_frac: list[torch.Tensor] = []  # [L]
        self.layer_names: list[str] = []
        self.n = 0
        self.magnitudes_before = torch.full((len(MAG_QUANTILES),), math.nan, dtype=torch.float64)
        self.top_before = torch.full((TOP_POINTS,), math.nan, dtype=torch.float64)
        self.mag_top: list[torch.Tensor] = []  # [TOP_POINTS] per epoch, within the top set
        self.kappa = math.nan
        self.prev_top: torch.Tensor | None = None  # packed top set of the previous epoch

    # ------------------------------------------------------------------ recording
    @torch.no_grad()
    def start(self, model: nn.Module, kappa: float) -> None:
        """At the start of ART: magnitudes and top set of the warm-up weights."""
        named = mask_ops.prunable_named_weights(model)
        self.layer_names = [n for n, _ in named]
        self.n = sum(w.numel() for _, w in named)
        ws = [w for _, w in named]
        self.kappa = float(kappa)
        before, top = magnitudes_at(ws, MAG_QUANTILES, top_quantiles(kappa))
        self.magnitudes_before, self.top_before = torch.from_numpy(before), torch.from_numpy(top)
        self.prev_top = pack(flat_mask(mask_ops.magnitude_masks(named, kappa), self.layer_names))

    @torch.no_grad()
    def record(
        self,
        work_dir: Path,
        row: dict[str, Any],
        model: nn.Module,
        masks: mask_ops.Masks,
        kappa: float,
    ) -> None:
        """Append one epoch: ``row`` holds the scalar CSV fields; ``masks`` is the top set."""
        named = mask_ops.prunable_named_weights(model)
        if not self.layer_names:
            self.layer_names = [n for n, _ in named]
            self.n = sum(w.numel() for _, w in named)
        ws = [w.detach() for _, w in named]
        flat = mask_ops.flat_abs(ws)
        vals, order = torch.sort(flat)  # one sort per epoch
        gi = rank_indices(GRAD_QUANTILES, self.n, flat.device)
        grads = hypersparse_grad(ws, kappa)
        gflat = torch.cat([g.detach().reshape(-1).float() for g in grads]).abs()
        self.grad_q.append(gflat[order[gi]].double().cpu())
        self.mag_q.append(vals[gi].double().cpu())
        self.mag_full.append(vals[rank_indices(MAG_QUANTILES, self.n, flat.device)].double().cpu())
        self.mag_top.append(
            vals[rank_indices(top_quantiles(kappa), self.n, flat.device)].double().cpu())
        self.layer_frac.append(
            torch.tensor([float(masks[n].float().mean()) for n in self.layer_names], dtype=torch.float64)
        )
        top = flat_mask(masks, self.layer_names)
        entered = left = -1
        if self.prev_top is not None:
            prev = unpack(self.prev_top, self.n)
            entered = int((top & ~prev).sum())
            left = int((prev & ~top).sum())
        packed = pack(top)
        self.prev_top = packed
        atomic_torch_save(Path(work_dir) / f"topset_e{int(row['epoch'])}.pt", packed)
        self.rows.append({**row, "entered": entered, "left": left, "iou_final": math.nan})

    def set_iou(self, work_dir: Path, final_mask: torch.Tensor) -> None:
        """IoU of every epoch's top set (saved in ``work_dir``) with the final mask."""
        final = final_mask.reshape(-1).to("cpu", torch.bool)
        for r in self.rows:
            path = Path(work_dir) / f"topset_e{int(r['epoch'])}.pt"
            if not path.is_file():
                continue
            top = unpack(safe_torch_load(path), self.n)
            inter = int((top & final).sum())
            union = int((top | final).sum())
            r["iou_final"] = inter / union if union else 1.0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (tensors, numbers, strings, lists, dicts)."""
        return {
            "rows": [dict(r) for r in self.rows],
            "grad_q": list(self.grad_q),
            "mag_q": list(self.mag_q),
            "mag_full": list(self.mag_full),
            "layer_frac": list(self.layer_frac),
            "layer_names": list(self.layer_names),
            "n": self.n,
            "magnitudes_before": self.magnitudes_before,
            "top_before": self.top_before,
            "mag_top": list(self.mag_top),
            "kappa": self.kappa,
            "prev_top": self.prev_top,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.rows = [dict(r) for r in state["rows"]]
        self.grad_q = list(state["grad_q"])
        self.mag_q = list(state["mag_q"])
        self.mag_full = list(state["mag_full"])
        self.layer_frac = list(state["layer_frac"])
        self.layer_names = list(state["layer_names"])
        self.n = int(state["n"])
        self.magnitudes_before = state["magnitudes_before"]
        self.top_before = state.get("top_before", self.top_before)
        self.mag_top = list(state.get("mag_top", []))
        self.kappa = float(state.get("kappa", math.nan))
        self.prev_top = state["prev_top"]

    # ------------------------------------------------------------------ output
    def magnitudes_at_epoch(self, epoch: int | None, top: bool = False) -> np.ndarray:
        """Sorted |w| at MAG_QUANTILES (``top``: at the top-set ranks) recorded after
        ``epoch`` (NaN if not recorded)."""
        series = self.mag_top if top else self.mag_full
        for r, m in zip(self.rows, series, strict=False):
            if epoch is not None and int(r["epoch"]) == int(epoch):
                return m.numpy()
        return np.full(TOP_POINTS if top else len(MAG_QUANTILES), np.nan)

    def arrays(
        self,
        kappa: float,
        selected_epoch: int | None,
        terminated_epoch: int | None,
        magnitudes_final: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The npz fields (shapes [E, Q], [E, L], ... also for zero rows)."""
        q, m, nl = len(GRAD_QUANTILES), len(MAG_QUANTILES), len(self.layer_names)

        def stack(xs: list[torch.Tensor], width: int) -> np.ndarray:
            return torch.stack(xs).numpy() if xs else np.zeros((0, width))

        return {
            "epochs": np.array([int(r["epoch"]) for r in self.rows], dtype=np.int64),
            "quantiles": GRAD_QUANTILES.copy(),
            "grad_at_quantile": stack(self.grad_q, q),
            "magnitude_at_quantile": stack(self.mag_q, q),
            "layer_names": np.array(self.layer_names, dtype=np.str_).reshape(nl),
            "layer_top_fraction": stack(self.layer_frac, nl),
            "mag_quantiles": MAG_QUANTILES.copy(),
            "magnitudes_before": self.magnitudes_before.numpy(),
            "magnitudes_termination": self.magnitudes_at_epoch(selected_epoch),
            "magnitudes_final": (
                np.full(m, np.nan) if magnitudes_final is None else np.asarray(magnitudes_final)
            ),
            "top_quantiles": top_quantiles(kappa),
            "magnitudes_top_before": self.top_before.numpy(),
            "magnitudes_top_termination": self.magnitudes_at_epoch(selected_epoch, top=True),
            "magnitudes_top_final": np.full(TOP_POINTS, np.nan),
            "kappa": np.array(float(kappa)),
            "selected_epoch": np.array(-1 if selected_epoch is None else int(selected_epoch)),
            "terminated_epoch": np.array(-1 if terminated_epoch is None else int(terminated_epoch)),
        }



def arrays_to_state(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """npz arrays as checkpointable values (tensors; string arrays as lists of str)."""
    return {k: (v.tolist() if v.dtype.kind == "U" else torch.from_numpy(np.array(v)))
            for k, v in arrays.items()}


def arrays_from_state(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of :func:`arrays_to_state`."""
    return {k: (np.array(v, dtype=np.str_) if isinstance(v, list) else v.numpy())
            for k, v in state.items()}


def write_trace_files(run_dir: Path, rows: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> None:
    """art_trace.csv (missing values empty) and art_trace.npz, each written atomically."""
    run_dir = Path(run_dir)
    atomic_write_csv(run_dir / "art_trace.csv", CSV_COLUMNS, rows, nan="")

    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(run_dir / "art_trace.npz", save)


