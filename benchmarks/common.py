"""Shared helpers of the benchmark scripts: devices, timing, memory, synthetic data, reference path.

Not part of the package and not a test: the scripts in this folder import it as a sibling
module. Timing is interleaved (blocks of work per path, the order rotated every round) and
summarised by medians, so machine load hits every path alike. Memory per path is measured in
a fresh subprocess (the script re-runs itself with ``--child``): peak RSS of that process via
`/proc VmHWM (getrusage's
ru_maxrss would inherit the parent's peak through fork + exec), the summed private memory (USS)
of its live DataLoader workers, and ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hypersparse.data import DatasetInfo, ImageData
from hypersparse.engine import resolve_device

REPO = Path(__file__).resolve().parents[1]

# The reference deliberately uses the authors' 4 workers on a 2-core machine: silence the hint.
warnings.filterwarnings("ignore", message="This DataLoader will create")

CIFAR10_INFO = DatasetInfo(
    name="synthetic-cifar10",
    num_classes=10,
    in_channels=3,
    image_size=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),
    pad=4,
    hflip=True,
)

# ----------------------------------------------------------------------------- devices


def device_string(device: torch.device) -> str:
    """A one-line description of the device the numbers come from."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timings mean what they say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> tuple[float, float, float]:
    """os.getloadavg() (1, 5, 15 min), or zeros where unsupported."""
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux
        return (0.0, 0.0, 0.0)


def git_state() -> str:
    """Short HEAD hash plus the number of modified/untracked paths (read-only git calls)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{head}" + (f" + {len(dirty)} uncommitted paths" if dirty else " (clean)")


def print_header(title: str, device: torch.device, extra: str = "") -> dict[str, Any]:
    """Print date, command, device, load and git state; return them as a dict."""
    meta = {
        "title": title,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "device": device_string(device),
        "torch": torch.__version__,
        "load_avg_start": [round(v, 2) for v in load_average()],
        "git": git_state(),
    }
    print(f"== {title}")
    print(f"date {meta['date']} | command: python {meta['command']}")
    print(f"device: {meta['device']} | torch {meta['torch']} | git {meta['git']}")
    print(f"load average (1/5/15 min) at start: {meta['load_avg_start']}" + extra, flush=True)
    return meta


# ------------------------------------------------------------------------------ timing


def endless_batches(loader: Iterable[Any]) -> Iterator[Any]:
    """Batches forever, epoch after epoch (a BatchLoader gets set_epoch; a DataLoader reshuffles
    on each new iterator by itself), so timed blocks can span epoch boundaries."""
    epoch = 0
    while True:
        set_epoch = getattr(loader, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        yield from loader
        epoch += 1


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def interleave(blocks: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each path's block once per round, rotating the order; collect what each returns."""
    names = list(blocks)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(blocks[name]())
    return out


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of fn(), with device syncs on both sides."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ memory


def _proc_kib(pid: int | str, field: str, fname: str = "status") -> float | None:
    """Sum of the `field:` lines (kB) in /proc/<pid>/<fname>, or None where unreadable."""
    try:
        text = Path(f"/proc/{pid}/{fname}").read_text()
    except OSError:
        return None
    vals = [float(line.split()[1]) for line in text.splitlines() if line.startswith(field + ":")]
    return sum(vals) if vals else None


def peak_rss_mib() -> float:
    """Peak RSS of this process image, MiB: VmHWM (reset at exec; getrusage's ru_maxrss is
    not: it inherits the parent's peak through fork + exec), else ru_maxrss."""
    hwm = _proc_kib("self", "VmHWM")
    if hwm is None:  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return hwm / 1024.0


def uss_mib(pids: Sequence[int]) -> float | None:
    """Summed unique (private) memory of live processes, MiB; None if none is readable."""
    vals = [_proc_kib(p, "Private_Clean", "smaps_rollup") for p in pids]
    vals += [_proc_kib(p, "Private_Dirty", "smaps_rollup") for p in pids]
    got = [v for v in vals if v is not None]
    return sum(got) / 1024.0 if got else None


def child_pids() -> list[int]:
    """PIDs of this process's live children (DataLoader workers, in a memory child), Linux."""
    pids: list[int] = []
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids += [int(p) for p in children.read_text().split()]
        except OSError:
            continue
    return sorted(set(pids))


def worker_pids(iterator: Any) -> list[int]:
    """PIDs of a live multi-process DataLoader iterator's workers (empty otherwise)."""
    return [w.pid for w in getattr(iterator, "_workers", []) if w.pid is not None]


def reset_gpu_peak(device: torch.device) -> None:
    """Start a fresh torch.cuda.max_memory_allocated window (no-op on CPU)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_mib(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated in MiB, or None on CPU."""
    if device.type != "cuda":
        return None
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def memory_report(device: torch.device, workers: Sequence[int] = ()) -> dict[str, float | None]:
    """Peak RSS of this process, summed private memory of live workers, peak GPU alloc (MiB)."""
    w = uss_mib(workers) if workers else None
    g = gpu_peak_mib(device)
    return {
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "workers_uss_mib": None if w is None else round(w, 1),
        "gpu_peak_mib": None if g is None else round(g, 1),
    }


def run_child(script: Path, args: Sequence[str], timeout: float = 900.0) -> dict[str, Any]:
    """Run ``python script *args``; the JSON object on its last '{' stdout line (or {} + a note)."""
    try:
        proc = subprocess.run([sys.executable, str(script), *args], capture_output=True,
                              text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        print(f"warning: memory child {' '.join(args)} timed out", file=sys.stderr)
        return {}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"warning: memory child {' '.join(args)} failed:\n{proc.stderr[-2000:]}",
              file=sys.stderr)
        return {}
    return json.loads(lines[-1])


def fmt_mib(v: float | None) -> str:
    """'123' or '-' for a missing value."""
    return "-" if v is None else f"{v:,.0f}"


# ---------------------------------------------------------------------- synthetic data


def synthetic_uint8(n: int, seed: int = 0, layout: str = "nchw", size: int = 32,
                    channels: int = 3) -> np.ndarray:
    """n random uint8 images (CIFAR-sized), filled chunk-wise so no second full copy exists."""
    shape = (n, channels, size, size) if layout == "nchw" else (n, size, size, channels)
    out = np.empty(shape, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for lo in range(0, n, 4096):
        hi = min(n, lo + 4096)
        out[lo:hi] = rng.integers(0, 256, size=(hi - lo, *shape[1:]), dtype=np.uint8)
    return out


def synthetic_labels(n: int, num_classes: int = 10, seed: int = 1) -> np.ndarray:
    """n random int64 labels."""
    return np.random.default_rng(seed).integers(0, num_classes, size=n, dtype=np.int64)


def project_data(n: int, seed: int = 0) -> ImageData:
    """The project's representation: uint8 [N, C, H, W] tensor + int64 labels."""
    return ImageData(torch.from_numpy(synthetic_uint8(n, seed, "nchw")),
                     torch.from_numpy(synthetic_labels(n)))


_FABRICATED: dict[tuple[int, int], Path] = {}


def fabricated_cifar_root(n: int, test_n: int = 10_000, seed: int = 0) -> Path:
    """A data root holding a prepared ``cifar10`` cache of random images in the real format
    (what ``hypersparse prepare`` writes), so the real engine can train on it."""
    import tempfile

    from hypersparse.data import dataset_info, prepared_dir
    from hypersparse.data.common import write_cache

    key = (n, test_n)
    if key not in _FABRICATED:
        root = Path(tempfile.mkdtemp(prefix="hypersparse-bench-"))
        splits = {"train": project_data(n, seed), "test": project_data(test_n, seed + 1)}
        write_cache(prepared_dir("cifar10", root), dataset_info("cifar10"), splits, {},
                    {"source": "fabricated by benchmarks/common.py"})
        _FABRICATED[key] = root
    return _FABRICATED[key]


def engine_trainer(root: Path, model: str, width: float, device: torch.device, *,
                   batch: int = 64, lr: float = 0.1, bf16: bool = False,
                   compile_mode: str | None = None, cuda_graphs: bool | None = None,
                   run_dir: Path | None = None) -> Any:
    """The project's Trainer on the fabricated CIFAR-10 cache (the real engine, its defaults)."""
    import tempfile

    from hypersparse.engine import Trainer
    from hypersparse.spec import RunSpec

    spec = RunSpec.from_dict({
        "dataset": "cifar10", "model": model, "width": width, "data_root": str(root),
        "device": str(device), "precision": "bf16" if bf16 else "fp32",
        "optim": {"lr": lr, "batch_size": batch},
    })
    out = run_dir or Path(tempfile.mkdtemp(prefix="hypersparse-bench-run-"))
    return Trainer(spec, out, progress=False, compile_mode=compile_mode, cuda_graphs=cuda_graphs)


def engine_steps(trainer: Any, hooks: Any, lr: float = 0.1, start_epoch: int = 1
                 ) -> Callable[[], None]:
    """One call = one iteration of the engine (``Trainer.train_iteration``) on the next batch
    of its own loader, in a phase started as ``fit`` starts one."""
    from hypersparse.engine import Phase

    trainer.start_phase(Phase("bench", 10**9, lr, start_epoch=start_epoch), hooks)
    trainer.begin_epoch(hooks)
    batches = endless_batches(trainer.train_loader)

    def step() -> None:
        x, y = next(batches)
        trainer.train_iteration(x, y, hooks)

    return step


def art_hooks(alpha: float, kappa: float, work_dir: Path | None = None) -> Any:
    """ART's hooks with HyperSparse at a constant alpha (start the phase at epoch 1)."""
    import tempfile

    from hypersparse.methods.art import ArtHooks, ArtParams

    params = ArtParams(regularizer="hs", lambda_init=alpha, eta=1.0, warmup_epochs=1)
    return ArtHooks(params, kappa, work_dir or Path(tempfile.mkdtemp()))


# ------------------------------------------------------------ reference (authors' style)


class PilArrayDataset(Dataset):
    """torchvision CIFAR10-style data set: HWC uint8 array, PIL image per item, transform."""

    def __init__(self, data: np.ndarray, targets: np.ndarray, transform: Callable) -> None:
        """Keep the HWC uint8 array and int labels, like torchvision's CIFAR10."""
        self.data = data
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        """Number of images."""
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Image.fromarray then the transform, as torchvision.datasets.CIFAR10 does."""
        from PIL import Image

        img = Image.fromarray(self.data[index])
        return self.transform(img), self.targets[index]


def reference_transform(info: DatasetInfo = CIFAR10_INFO) -> Callable:
    """The authors' training transform: RandomCrop(pad 4) + flip + ToTensor + Normalize."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomCrop(info.image_size, padding=info.pad),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(info.mean, info.std),
    ])


def reference_dataset(n: int, seed: int = 0) -> PilArrayDataset:
    """Synthetic CIFAR-sized data in the reference's representation (same pixels as ours)."""
    return PilArrayDataset(synthetic_uint8(n, seed, "nhwc"), synthetic_labels(n),
                           reference_transform())


def reference_loader(ds: Dataset, batch_size: int, workers: int, pin_memory: bool = False
                     ) -> DataLoader:
    """torch DataLoader as the authors build it (shuffle, `workers` processes)."""
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                      pin_memory=pin_memory)


def prefetch_depth(loader: DataLoader) -> int:
    """Batches a fresh multi-worker iterator prepares ahead (workers x prefetch_factor)."""
    if loader.num_workers == 0:
        return 0
    return loader.num_workers * (loader.prefetch_factor or 2)


def add_common_args(ap: Any) -> None:
    """Options every benchmark script shares (argparse.ArgumentParser)."""
    ap.add_argument("--quick", action="store_true", help="tiny run (seconds): smoke test")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--memory", choices=["subprocess", "off"], default=None,
                    help="per-path peak memory in fresh subprocesses (default: on unless --quick)")
    ap.add_argument("--json", default=None, help="also write rows + metadata to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)


def add_model_args(ap: Any) -> None:
    """The models, width and batch size of the benchmarks that train the paper's models."""
    ap.add_argument("--models", nargs="+", default=["resnet32", "vgg19"])
    ap.add_argument("--width", type=float, default=None, help="model width (1; --quick: 0.25)")
    ap.add_argument("--batch", type=int, default=64)


def apply_common_args(args: Any) -> torch.device:
    """Fill --memory's default, set --threads, and return the device of --device."""
    args.memory = args.memory or ("off" if args.quick else "subprocess")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def memory_cells(row: dict[str, Any]) -> str:
    """The three memory columns of a result row: peak RSS, workers' USS, GPU peak (MiB)."""
    return " ".join(f"{fmt_mib(row.get(k)):>8s}"
                    for k in ("peak_rss_mib", "workers_uss_mib", "gpu_peak_mib"))


def finish(meta: dict[str, Any], rows: list[dict[str, Any]], json_path: str | None,
           suffix: str = "") -> None:
    """Print the closing load average and write rows + metadata to ``json_path`` if given."""
    meta["load_avg_end"] = [round(v, 2) for v in load_average()]
    print(f"load average at end: {meta['load_avg_end']}{suffix}", flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
