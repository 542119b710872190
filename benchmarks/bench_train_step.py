"""Full training step, data included: images/second of the project's path vs the authors' style.

One step = next batch -> forward -> cross-entropy (+ alpha * HyperSparse) -> backward -> SGD
step (momentum 0.9, weight decay 1e-4), batch 64, 32 px, 10 classes, synthetic CIFAR-sized uint8
data (50,000 images by default) generated in-process. Both paths train the project's own model
(hypersparse.models.build_model, same init), so the difference is the pipeline around it:
  project    - the real engine on a fabricated CIFAR-10 cache: Trainer.train_iteration
               (BatchLoader with batch-wise augmentation on the device, the engine's step
               with ART's hooks adding the HS gradient, on-device sums; on CUDA the step is
               replayed from a CUDA graph after 3 warm-up steps, channels_last,
               cudnn.benchmark), optional --bf16 (autocast); --compile adds a third path,
               the engine with torch.compile (eager steps)
  reference  - the authors' pipeline rebuilt from stock parts: PIL-per-item Dataset +
               Compose([RandomCrop(32, 4), RandomHorizontalFlip(), ToTensor(), Normalize]) +
               DataLoader(batch 64, shuffle, num_workers=4); per step .to(device), loss and
               top-1/top-5 .item() (their train loop), HS threshold by torch.sort of all |w|
               (value sum|w| * T / stopgrad(T) - sum|w|); NCHW, fp32
Blocks of steps are interleaved (order rotated per round); a block's time / steps is one
sample, the median over blocks is reported. Iterators persist across blocks (a worker pool in
steady state has at most one batch in flight while the other path runs).
Seconds per epoch are extrapolated: iterator start-up (measured) + ceil(N / 64) steps at the
median step time (--full-epoch times one real epoch per path instead; sensible on a GPU).
Memory per path: a fresh subprocess per (model, path): peak RSS of the process (VmHWM), the
private memory (USS) summed over its live DataLoader workers, torch.cuda.max_memory_allocated.

    python benchmarks/bench_train_step.py [--quick] [--device auto] [--models resnet32 vgg19]
        [--bf16] [--compile] [--reg hs|none] [--threads N] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from bench_hs_overhead import authors_sort_hs  # noqa: E402  (the authors' sort-based HS)

from hypersparse.data import BatchLoader  # noqa: E402
from hypersparse.masks import prunable_weights  # noqa: E402
from hypersparse.models import build_model  # noqa: E402

SCRIPT = Path(__file__).resolve()
ALPHA = 5e-6  # lambda_init of the authors' code: the size does not change the cost
KAPPA = 0.9
LR, MOMENTUM, WD = 0.1, 0.9, 1e-4
TARGET_CPU, TARGET_GPU = 1.0, 5.0  # project / reference, from the "Performance" issue


def _model(name: str, width: float, device: torch.device) -> torch.nn.Module:
    """The same initial model for both paths (seeded), on the device."""
    torch.manual_seed(0)
    return build_model(name, 10, width=width).to(device)


def project_path(args: argparse.Namespace, name: str, device: torch.device,
                 compiled: bool = False) -> tuple[Callable[[], None], Callable[[], float]]:
    """(one training step, iterator start-up -> s) of the project: the real engine's
    iteration (``Trainer.train_iteration``: its BatchLoader, its step, replayed from a CUDA
    graph on CUDA, ART's HS gradient) on a fabricated CIFAR-10 cache.
    ``compiled``: the training forward through torch.compile, as config `compile: true`."""
    from hypersparse.engine import Hooks

    root = common.fabricated_cifar_root(args.n, test_n=1024)
    trainer = common.engine_trainer(root, name, args.width, device, batch=args.batch, lr=LR,
                               bf16=args.bf16, compile_mode="default" if compiled else None)
    torch.manual_seed(0)  # the same initial model as the reference path
    trainer.model.load_state_dict(_model(name, args.width, device).state_dict())
    hooks = common.art_hooks(ALPHA, KAPPA) if args.reg == "hs" else Hooks()
    step = common.engine_steps(trainer, hooks, lr=LR)
    loader = trainer.train_loader

    def startup() -> float:
        def work() -> None:
            loader.set_epoch(10_000)
            next(iter(loader))

        return common.timed(work, device)

    return step, startup


def reference_path(args: argparse.Namespace, name: str, device: torch.device
                   ) -> tuple[Callable[[], None], Callable[[], float]]:
    """(one training step, iterator start-up -> s) of the authors'-style path."""
    ds = common.reference_dataset(args.n)
    loader = common.reference_loader(ds, args.batch, args.workers)
    model = _model(name, args.width, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the authors' train.py sets it too
    weights = prunable_weights(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    st: dict[str, Any] = {"meters": [0.0, 0.0, 0.0]}
    batches = common.endless_batches(loader)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        return next(batches)

    def step() -> None:
        x, y = next_batch()
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss = F.cross_entropy(out, y)
        top5 = out.detach().topk(5, 1).indices == y[:, None]
        st["meters"][0] += loss.item()
        st["meters"][1] += top5[:, 0].float().mean().item()
        st["meters"][2] += top5.any(1).float().mean().item()
        opt.zero_grad()
        if args.reg == "hs":
            loss = loss + ALPHA * authors_sort_hs(weights, KAPPA)
        loss.backward()
        opt.step()

    def startup() -> float:
        def work() -> None:
            it = iter(loader)
            next(it)
            del it

        return common.timed(work, device)

    return step, startup


def compiled_path(args: argparse.Namespace, name: str, device: torch.device
                  ) -> tuple[Callable[[], None], Callable[[], float]]:
    """The project's path with the training forward compiled (--compile adds it)."""
    return project_path(args, name, device, compiled=True)


def paths(args: argparse.Namespace) -> dict[str, Callable]:
    """The compared paths: project and reference, plus the compiled project with --compile."""
    out = {"project": project_path, "reference": reference_path}
    if args.compile:
        out["compiled"] = compiled_path
    return out


def block_runner(step: Callable[[], None], k: int, device: torch.device) -> Callable[[], float]:
    """A block of k steps -> mean seconds per step (synced)."""
    return lambda: common.timed(lambda: [step() for _ in range(k)], device) / k


def full_epoch_s(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for `steps` consecutive steps (one real epoch when steps = batches per epoch)."""
    return common.timed(lambda: [step() for _ in range(steps)], device)


WARMUP_EPOCHS, FINETUNE_EPOCHS, TEST_IMAGES, EVAL_BATCH = 60, 160, 10_000, 1024


def eval_seconds_per_image(args: argparse.Namespace, name: str, device: torch.device) -> float:
    """Seconds per image of the engine's evaluation (eval mode, no autograd, batches of 1024,
    augmented as ART's pruned-copy pass), from a few timed batches after a warm-up batch."""
    loader = BatchLoader(common.project_data(args.n), common.CIFAR10_INFO, EVAL_BATCH, train=False,
                         augment=True, device=device, seed=0)
    model = _model(name, args.width, device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    batches = common.endless_batches(loader)

    @torch.no_grad()
    def one() -> None:
        x, _ = next(batches)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        model(x).argmax(1)

    one()
    k = 2 if args.quick else 4
    return common.timed(lambda: [one() for _ in range(k)], device) / (k * EVAL_BATCH)


def art_run_estimate(row: dict[str, Any], eval_s_per_image: float, art_epochs: int,
                     n_epoch: int) -> dict[str, float]:
    """Minutes of a 60 + ART + 160 epoch run from measured parts: training steps, the pruned
    copy's pass over the training set after each ART epoch, a test pass after every epoch."""
    epochs = WARMUP_EPOCHS + art_epochs + FINETUNE_EPOCHS
    train = epochs * row["epoch_s"]
    pruned = art_epochs * n_epoch * eval_s_per_image
    test = epochs * TEST_IMAGES * eval_s_per_image
    return {"art_epochs_assumed": art_epochs, "run_min": (train + pruned + test) / 60,
            "run_train_min": train / 60, "run_eval_min": (pruned + test) / 60}


def bench_model(args: argparse.Namespace, name: str, device: torch.device) -> list[dict]:
    """Interleaved timing of both paths for one model; one row per path."""
    made = {}
    startups = {}
    for p, make in paths(args).items():
        step, startup = make(args, name, device)
        startups[p] = common.median([startup() for _ in range(1 if args.quick else 2)])
        made[p] = step
    warm = 5  # past the engine's 3 warm-up steps and its CUDA graph capture (or compile)
    for step in made.values():
        for _ in range(warm):
            step()
    samples = common.interleave({p: block_runner(s, args.block, device) for p, s in made.items()},
                           args.rounds)
    steps_per_epoch = math.ceil(args.n_epoch / args.batch)
    rows = []
    for p, vals in samples.items():
        ms = 1e3 * common.median(vals)
        row = {
            "model": name,
            "path": p,
            "ms_per_step": ms,
            "images_per_s": args.batch / (ms / 1e3),
            "spread_ms": [1e3 * min(vals), 1e3 * max(vals)],
            "blocks": len(vals),
            "steps_per_block": args.block,
            "startup_s": startups[p],
            "steps_per_epoch": steps_per_epoch,
            "epoch_s": startups[p] + steps_per_epoch * ms / 1e3,
            "epoch_s_how": f"extrapolated: start-up + {steps_per_epoch} x median step",
        }
        if args.full_epoch:
            row["epoch_s"] = full_epoch_s(made[p], steps_per_epoch, device) + startups[p]
            row["epoch_s_how"] = f"measured: {steps_per_epoch} consecutive steps + start-up"
        rows.append(row)
    if args.art_epochs is not None:
        per_image = eval_seconds_per_image(args, name, device)
        for row in rows:
            if row["path"] != "reference":  # its evaluation is not the engine's
                row.update(art_run_estimate(row, per_image, args.art_epochs, args.n_epoch))
                row["eval_ms_per_image"] = 1e3 * per_image
    return rows


def child_main(args: argparse.Namespace, device: torch.device) -> None:
    """One (model, path) in this fresh process: a few steps, then the memory report as JSON."""
    name, path = args.child.split(":")
    common.reset_gpu_peak(device)
    step, _ = paths(args)[path](args, name, device)
    for _ in range(args.block + 2):
        step()
    workers = common.child_pids()  # the reference's DataLoader workers, alive behind the iterator
    print(json.dumps({"model": name, "path": path, **common.memory_report(device, workers)}))


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Parse options, run the benchmark, print the table (and JSON if asked)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(ap)
    common.add_model_args(ap)
    ap.add_argument("--n", type=int, default=None, help="images held in memory (50000)")
    ap.add_argument("--epoch-images", dest="n_epoch", type=int, default=50_000,
                    help="epoch size for the seconds-per-epoch column")
    ap.add_argument("--block", type=int, default=None, help="steps per block (3)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (4)")
    ap.add_argument("--workers", type=int, default=None, help="reference workers (4)")
    ap.add_argument("--reg", choices=["hs", "none"], default="hs",
                    help="regulariser in both paths (hs: ours vs sort-based)")
    ap.add_argument("--bf16", action="store_true", help="project path: bf16 autocast (CUDA)")
    ap.add_argument("--compile", action="store_true",
                    help="add a third path: the project's with torch.compile (config compile)")
    ap.add_argument("--full-epoch", action="store_true", help="time one real epoch per path")
    ap.add_argument("--art-epochs", type=int, default=None, metavar="E",
                    help="also estimate a 60 + E + 160 epoch ART run of the project path "
                    "(training steps + pruned-copy and test evaluations, from measured parts)")
    args = ap.parse_args(argv)
    q = args.quick
    args.width = args.width or (0.25 if q else 1.0)
    args.n = args.n or (1024 if q else 50_000)
    args.block = args.block or (1 if q else 3)
    args.rounds = args.rounds or (2 if q else 4)
    args.workers = args.workers if args.workers is not None else (2 if q else 4)
    device = common.apply_common_args(args)
    if args.child:
        child_main(args, device)
        return []
    opts = [o for o, on in (("bf16", args.bf16 and device.type == "cuda"),
                            ("+ compiled path", args.compile)) if on]
    meta = common.print_header(
        "training step incl. data: project vs authors'-style reference", device,
        f" | batch {args.batch}, width {args.width}, N={args.n}, reg {args.reg}, "
        f"{args.rounds} rounds x {args.block} steps, ref workers {args.workers}, "
        f"project extras: {', '.join(opts) or 'none'}")
    if args.bf16 and device.type != "cuda":
        print("note: --bf16 only applies on CUDA (as in the engine); ignored on CPU")
    print(f"{'model':9s} {'path':9s} {'ms/step':>9s} {'img/s':>8s} {'min..max ms':>15s} "
          f"{'s/epoch':>8s} {'RSS MiB':>8s} {'wkr USS':>8s} {'GPU MiB':>8s}", flush=True)
    rows: list[dict[str, Any]] = []
    target = TARGET_GPU if device.type == "cuda" else TARGET_CPU
    for name in args.models:
        model_rows = bench_model(args, name, device)
        if args.memory == "subprocess":
            for row in model_rows:
                child = ["--child", f"{name}:{row['path']}", "--device", str(device),
                         "--n", str(args.n), "--width", str(args.width), "--batch",
                         str(args.batch), "--block", str(args.block), "--workers",
                         str(args.workers), "--reg", args.reg, "--threads", str(args.threads)]
                child += ["--bf16"] if args.bf16 else []
                child += ["--compile"] if args.compile else []
                row.update(common.run_child(SCRIPT, child))
        for row in model_rows:
            lo, hi = row["spread_ms"]
            print(f"{name:9s} {row['path']:9s} {row['ms_per_step']:9.1f} "
                  f"{row['images_per_s']:8.1f} {f'{lo:.0f}..{hi:.0f}':>15s} "
                  f"{row['epoch_s']:8.1f} {common.memory_cells(row)}")
        ms = {row["path"]: row["ms_per_step"] for row in model_rows}
        ratio = ms["reference"] / ms["project"]
        for row in model_rows:
            row["speedup_project_over_reference"] = ratio
            row["device"] = meta["device"]
        verdict = "met" if ratio >= target else "MISSED"
        print(f"{name:9s} speed-up project / reference: {ratio:.2f}x (target >= {target:g}x on "
              f"{device.type}: {verdict})", flush=True)
        if "compiled" in ms:
            gain = ms["project"] / ms["compiled"]
            for row in model_rows:
                row["speedup_compiled_over_eager"] = gain
            print(f"{name:9s} speed-up compiled / eager project path: {gain:.2f}x "
                  "(compile time excluded: warm-up steps)", flush=True)
        for row in model_rows:
            if "run_min" in row:
                print(f"{name:9s} {row['path']}: estimated {WARMUP_EPOCHS} + {args.art_epochs} + "
                      f"{FINETUNE_EPOCHS} epoch ART run: {row['run_min']:.1f} min (training "
                      f"{row['run_train_min']:.1f}, evaluations {row['run_eval_min']:.1f}; "
                      f"s/epoch {row['epoch_s_how'].split(':')[0]})", flush=True)
        rows.extend(model_rows)
    print(f"s/epoch: {rows[0]['epoch_s_how']} (N={args.n_epoch}); RSS: peak (VmHWM) of a fresh "
          "process running one path; wkr USS: private memory summed over its live workers")
    common.finish(meta, rows, args.json, suffix=f" | device {meta['device']}")
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    if main():
        print(f"wall {time.perf_counter() - t0:.0f} s")
