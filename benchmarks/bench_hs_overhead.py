"""Cost of the HyperSparse regularizer in a training step (not a unit test).

Builds ResNet-32 and VGG-19 (10 classes) and times, in one process, a full training step
(forward + cross-entropy + backward + SGD step, batch 64, 32 px random inputs: 16 distinct
batches cycled, the same for every mode) three ways:
  none  - cross-entropy only
  ours  - CE backward, then alpha * the HS gradient added into w.grad by
          hypersparse.regularizers.HyperSparseGradient (exactly what ART's training step does)
  sort  - CE + alpha * the authors' formulation (a_k by torch.sort over all N weights, value
          sum|w| * T / stopgrad(T) - sum|w|), re-implemented here for comparison
  control - the "none" step again: its ratio to "none" is the noise floor of this run
Measurements are interleaved (blocks of steps, mode order rotated every round); a mode's
ratio is the median over rounds of its block time / the "none" block of the same round, so
slow phases of a shared machine cancel within a round. Also prints
the HS part's own median time inside those steps (threshold + gradient into w.grad) and the
peak RSS.

    python benchmarks/bench_hs_overhead.py [--models resnet32 vgg19] [--steps 20]
        [--threads N] [--device cpu|cuda|auto] [--no-sort] [--json F]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from hypersparse.masks import prunable_weights  # noqa: E402
from hypersparse.models import build_model  # noqa: E402
from hypersparse.regularizers import HyperSparseGradient  # noqa: E402

ALPHA = 5e-6
PRUNE_RATE = 0.9
N_BATCHES = 16


def authors_sort_hs(weights: Sequence[Tensor], prune_rate: float) -> Tensor:
    """The authors' formulation: one concatenated vector, full sort for a_k, value 0."""
    w = torch.cat([x.reshape(-1) for x in weights])
    w_abs = w.abs()
    sorted_abs = torch.sort(w_abs.detach()).values
    s = 0.6585 / sorted_abs[math.floor(prune_rate * sorted_abs.numel())]
    t_sum = torch.tanh(s * w_abs).sum()
    return (w_abs * t_sum / t_sum.detach() - w_abs).sum()


MODES = ["none", "ours", "sort", "control"]  # control: the plain step again (A/A)


def make_steps(
    model: nn.Module,
    modes: Sequence[str],
    batches: Sequence[tuple[Tensor, Tensor]],
    device: torch.device,
) -> dict[str, Callable[[], tuple[float, float]]]:
    """Per mode, a closure running one training step: (step seconds, regulariser seconds).

    All modes train the same model with the same optimizer, so no mode gets a luckier memory
    placement than another (separate model copies differed by ~4% in A/A runs here), and the
    HS bracket sees a model that moves by one SGD step between calls, as in training. The
    closures cycle through ``batches``: one batch over and over would be memorised within a
    few steps, and vanishing gradients (denormal floats) would distort the timings.
    """
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    weights = prunable_weights(model)
    hs = HyperSparseGradient()
    cycle = itertools.cycle(batches)

    def sync() -> None:
        common.sync(device)

    def make(mode: str) -> Callable[[], tuple[float, float]]:
        def step() -> tuple[float, float]:
            x, y = next(cycle)
            sync()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            sync()
            r0 = time.perf_counter()
            if mode == "sort":
                loss = loss + ALPHA * authors_sort_hs(weights, PRUNE_RATE)
            sync()
            r1 = time.perf_counter()
            loss.backward()
            sync()
            r2 = time.perf_counter()
            if mode == "ours":  # "control" is a second "none": the noise floor of the ratios
                hs.add_to_grads_(weights, PRUNE_RATE, ALPHA)
            sync()
            r3 = time.perf_counter()
            opt.step()
            sync()
            # "sort": its forward only (its backward is inside loss.backward, not separable)
            return time.perf_counter() - t0, (r1 - r0) + (r3 - r2)

        return step

    return {m: make(m) for m in modes}


def bench_model(
    name: str, steps: int, block: int, batch: int, modes: list[str], device: torch.device
) -> dict:
    """Interleaved timing of the modes on one model; returns a result row."""
    torch.manual_seed(0)
    batches = [
        (torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device))
        for _ in range(N_BATCHES)
    ]
    model = build_model(name, 10).to(device)
    if device.type == "cuda":  # as the engine: channels_last, cuDNN autotuning
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    common.reset_gpu_peak(device)
    steppers = make_steps(model, modes, batches, device)
    for fn in steppers.values():  # warm-up: allocator, kernels, momentum buffers, HS buffers
        fn()
        fn()
    times: dict[str, list[float]] = {m: [] for m in modes}  # mean step time per block
    reg: dict[str, list[float]] = {m: [] for m in modes}
    rounds = math.ceil(steps / block)
    for r in range(rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for mode in order:
            samples = [steppers[mode]() for _ in range(block)]
            times[mode].append(statistics.fmean(t for t, _ in samples))
            reg[mode].extend(g for _, g in samples)
    med = {m: 1e3 * statistics.median(v) for m, v in times.items()}
    med_reg = {m: 1e3 * statistics.median(v) for m, v in reg.items()}

    def paired(mode: str) -> float:
        """Median over rounds of (this mode's block / the plain block of the same round)."""
        if mode not in times:
            return math.nan
        return statistics.median(a / b for a, b in zip(times[mode], times["none"], strict=True))

    return {
        "model": name,
        "num_weights": sum(w.numel() for w in prunable_weights(build_model(name, 10))),
        "steps_per_mode": rounds * block,
        "ms_none": med["none"],
        "ms_ours": med["ours"],
        "ms_sort": med.get("sort", math.nan),
        "ratio_ours": paired("ours"),
        "ratio_ours_direct": 1.0 + med_reg["ours"] / med["none"],
        "ratio_sort": paired("sort"),
        "ratio_control": paired("control"),
        "reg_ms_ours": med_reg["ours"],
        "reg_fwd_ms_sort": med_reg.get("sort", math.nan),
        "peak_rss_mib": common.peak_rss_mib(),
        "gpu_peak_mib": common.gpu_peak_mib(device),
    }


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the benchmark and print a table (and optionally write JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet32", "vgg19"])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per mode (>= 10)")
    ap.add_argument("--block", type=int, default=1, help="consecutive steps per mode")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--device", default="cpu", help="cpu (the issue's target), cuda, auto")
    ap.add_argument("--no-sort", action="store_true", help="skip the slow sort-based mode")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    modes = [m for m in MODES if not (args.no_sort and m == "sort")]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = common.resolve_device(args.device)
    device = common.device_string(dev)
    print(
        f"device: {device}; torch {torch.__version__}; batch {args.batch}; 32 px; kappa {PRUNE_RATE}"
    )
    rows = []
    header = (
        f"{'model':10s} {'N':>11s} {'none ms':>9s} {'ours ms':>9s} {'sort ms':>9s} "
        f"{'ours/none':>9s} {'1+reg/none':>10s} {'sort/none':>9s} {'A/A':>6s} {'reg ours':>9s} "
        f"{'sort fwd':>9s} {'peak RSS':>9s} {'GPU peak':>9s}"
    )
    print(header)
    for name in args.models:
        row = bench_model(name, args.steps, args.block, args.batch, modes, dev)
        row["device"] = device
        rows.append(row)
        print(
            f"{name:10s} {row['num_weights']:>11,d} {row['ms_none']:9.1f} {row['ms_ours']:9.1f} "
            f"{row['ms_sort']:9.1f} {row['ratio_ours']:9.3f} {row['ratio_ours_direct']:10.3f} "
            f"{row['ratio_sort']:9.3f} {row['ratio_control']:6.3f} "
            f"{row['reg_ms_ours']:9.1f} {row['reg_fwd_ms_sort']:9.1f} "
            f"{row['peak_rss_mib']:7.0f}Mi "
            + (f"{row['gpu_peak_mib']:7.0f}Mi" if row["gpu_peak_mib"] is not None else "        -"),
            flush=True,
        )
    print(
        "ours/none, sort/none: median over rounds of (block with HS / plain block of the same "
        "round) (target <= 1.05); A/A: the same for the plain step again, i.e. the noise "
        "floor; 1+reg/none: from the HS part's own median time inside the steps; "
        "reg ours: HS threshold + gradient into w.grad; sort fwd: the sort-based loss's forward"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
