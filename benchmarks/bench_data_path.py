"""Data path alone: augmented, normalised training batches per second (not a unit test).

Paths, all on the same synthetic CIFAR-sized uint8 data (50,000 x 3 x 32 x 32 by default):
  project  - hypersparse.data.BatchLoader on the uint8 tensor (shuffle, batch-wise
             random crop (pad 4) + flip via augment_batch, normalise), on the device
  ref-w4   - the authors' style: Dataset of HWC uint8 -> PIL.Image.fromarray per item ->
             Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(),
             Normalize]) -> DataLoader(batch 64, shuffle, num_workers=4), batch .to(device)
  ref-w0   - the same with num_workers=0 (context: the per-image cost without workers)
Blocks of batches are interleaved (order rotated per round); the median block rate is
reported. A reference block uses a fresh iterator and discards the first
workers x prefetch_factor batches untimed (they are prepared during start-up), so the timed
batches are the workers' steady state and no worker runs while another path is timed.
Memory per path: a fresh subprocess per path (peak RSS of the process, largest peak RSS of
its workers, peak CUDA allocation).

    python benchmarks/bench_data_path.py [--quick] [--device auto|cpu|cuda] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from hypersparse.data import BatchLoader  # noqa: E402

SCRIPT = Path(__file__).resolve()
TARGET_RATIO = 10.0  # project vs ref-w4 on the 2-core CPU (issue "Performance")


def project_block(device: torch.device, n: int, batch: int, seed: int = 0
                  ) -> tuple[Callable[[int], float], Callable[[], float], Callable[[], list]]:
    """(run k batches -> seconds, start-up -> seconds) for the project's BatchLoader."""
    loader = BatchLoader(common.project_data(n, seed), common.CIFAR10_INFO, batch, train=True,
                         device=device, seed=seed)
    batches = common.endless_batches(loader)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        return next(batches)

    def run(k: int) -> float:
        def work() -> None:
            for _ in range(k):
                next_batch()

        return common.timed(work, device)

    def startup() -> float:
        def work() -> None:
            loader.set_epoch(10_000)
            next(iter(loader))

        return common.timed(work, device)

    return run, startup, list


def reference_block(device: torch.device, n: int, batch: int, workers: int, seed: int = 0
                    ) -> tuple[Callable[[int], float], Callable[[], float], Callable[[], list]]:
    """(run k steady-state batches -> seconds, start-up -> seconds) for the DataLoader path."""
    ds = common.reference_dataset(n, seed)
    loader = common.reference_loader(ds, batch, workers, pin_memory=False)
    skip = common.prefetch_depth(loader)

    def fetch(it: Iterator) -> None:
        x, y = next(it)
        x.to(device, non_blocking=False), y.to(device, non_blocking=False)

    def run(k: int) -> float:
        it = iter(loader)
        for _ in range(skip + 1):  # start-up and the batches prepared during it
            fetch(it)
        t = common.timed(lambda: [fetch(it) for _ in range(k)], device)
        if hasattr(it, "_shutdown_workers"):  # nothing runs while the next path is timed
            it._shutdown_workers()
        return t

    def startup() -> float:
        def work() -> None:
            it = iter(loader)
            fetch(it)
            del it

        return common.timed(work, device)

    def live_workers() -> list[int]:
        """Start an iterator, let it reach steady state, return its worker PIDs (kept alive)."""
        it = iter(loader)
        for _ in range(skip + 4):
            fetch(it)
        keep.append(it)
        return common.worker_pids(it)

    keep: list[Iterator] = []
    return run, startup, live_workers


def measure(args: argparse.Namespace, device: torch.device, paths: Sequence[str]
            ) -> list[dict[str, Any]]:
    """Interleaved timing of the given paths; one row per path."""
    makers = {}
    for p in paths:
        if p == "project":
            makers[p] = project_block(device, args.n, args.batch)
        else:
            makers[p] = reference_block(device, args.n, args.batch, int(p.split("-w")[1]))
    ks = {p: (args.batches if p != "ref-w0" else max(2, args.batches // 4)) for p in paths}
    for p in paths:  # warm-up
        makers[p][0](2)
    blocks = {p: (lambda p=p: ks[p] / makers[p][0](ks[p])) for p in paths}
    rates = common.interleave(blocks, args.rounds)
    rows = []
    for p in paths:
        startup = common.median([makers[p][1]() for _ in range(1 if args.quick else 3)])
        bps = common.median(rates[p])
        rows.append({
            "path": p,
            "batches_per_s": bps,
            "images_per_s": bps * args.batch,
            "blocks": len(rates[p]),
            "batches_per_block": ks[p],
            "spread_batches_per_s": [min(rates[p]), max(rates[p])],
            "startup_s": startup,
            "epoch_data_s": startup + (args.n / args.batch) / bps,
        })
    return rows


def child_main(args: argparse.Namespace, device: torch.device) -> None:
    """One path in this fresh process: a few blocks, then print the memory report as JSON."""
    common.reset_gpu_peak(device)
    path = args.child
    if path == "project":
        run, _, live = project_block(device, args.n, args.batch)
    else:
        run, _, live = reference_block(device, args.n, args.batch, int(path.split("-w")[1]))
    for _ in range(2):
        run(max(4, args.batches // 2))
    print(json.dumps({"path": path, **common.memory_report(device, live())}))


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Parse options, run the benchmark, print the table (and JSON if asked)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(ap)
    ap.add_argument("--n", type=int, default=None, help="images in the synthetic set (50000)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=None, help="timed batches per block (40)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5)")
    ap.add_argument("--workers", type=int, nargs="+", default=[4, 0],
                    help="reference DataLoader worker counts (first one is the target's)")
    args = ap.parse_args(argv)
    q = args.quick
    args.n = args.n or (2048 if q else 50_000)
    args.batches = args.batches or (4 if q else 40)
    args.rounds = args.rounds or (2 if q else 5)
    if q:
        args.workers = [min(w, 2) for w in args.workers]
    device = common.apply_common_args(args)
    if args.child:
        child_main(args, device)
        return []
    paths = ["project"] + [f"ref-w{w}" for w in dict.fromkeys(args.workers)]
    meta = common.print_header("data path: augmented + normalised batches", device,
                          f" | N={args.n}, batch {args.batch}, {args.batches} batches/block,"
                          f" {args.rounds} rounds")
    rows = measure(args, device, paths)
    if args.memory == "subprocess":
        for row in rows:
            child_args = ["--child", row["path"], "--device", str(device), "--n", str(args.n),
                          "--batch", str(args.batch), "--batches", str(args.batches),
                          "--threads", str(args.threads)]
            row.update(common.run_child(SCRIPT, child_args))
    base = rows[0]["batches_per_s"]
    print(f"{'path':9s} {'batch/s':>9s} {'img/s':>9s} {'x ref':>7s} {'min..max batch/s':>17s} "
          f"{'startup s':>9s} {'epoch s':>8s} {'RSS MiB':>8s} {'wkr USS':>8s} {'GPU MiB':>8s}")
    for row in rows:
        row["project_over_this"] = base / row["batches_per_s"]
        lo, hi = row["spread_batches_per_s"]
        print(f"{row['path']:9s} {row['batches_per_s']:9.1f} {row['images_per_s']:9.0f} "
              f"{row['project_over_this']:7.2f} {f'{lo:.1f}..{hi:.1f}':>17s} "
              f"{row['startup_s']:9.3f} {row['epoch_data_s']:8.2f} "
              f"{common.memory_cells(row)}")
    ref = rows[1]
    ratio = base / ref["batches_per_s"]
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"ratio project / {ref['path']}: {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x on the "
          f"2-core CPU: {verdict}) | device {meta['device']}")
    print("x ref = project rate / this path's rate; epoch s = start-up + N/batch batches at the "
          "median rate; RSS = peak RSS (VmHWM) of a fresh process running only this path; wkr USS = "
          "private memory summed over its live workers (in steady state)")
    common.finish(meta, rows, args.json)
    return rows


if __name__ == "__main__":
    main()
