"""Command-line interface: argument parsing and nothing else. The workflow calls only this."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from . import __version__
from .data.names import DATASETS, base_name
from .spec import COMPILE_MODES

log = logging.getLogger("hypersparse")

# the figures `hypersparse plot` draws (analysis.figures.FIGURES; a test keeps them equal)
FIGURE_NAMES = ("acc_vs_sparsity", "acc_vs_flops", "hs_gradient", "exploration",
                "art_termination", "layer_density", "kernel_patterns", "magnitudes")


def _dataset(text: str) -> str:
    """argparse type: a data set name, or its pilot subset (cifar10-c5-n100)."""
    if base_name(text) not in DATASETS:
        raise argparse.ArgumentTypeError(
            f"unknown data set {text!r}: choose from {', '.join(DATASETS)} (a pilot "
            "subset adds e.g. -c5-n100)")
    return text


def _model(text: str) -> str:
    """argparse type: resnet<6n+2> or vgg11/13/16/19."""
    from .models import parse_model_name

    try:
        parse_model_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every option's default."""


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line (`hypersparse train: error: ...`; --help has the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_spec_args(p: argparse.ArgumentParser, method_default: str | None) -> None:
    p.add_argument("--spec-json", help="the full run spec as JSON (what the workflow passes)")
    p.add_argument("--dataset", type=_dataset,
                   help="digits | cifar10 | cifar100 | tinyimagenet (or a pilot subset)")
    p.add_argument("--model", type=_model, help="resnet<6n+2> (e.g. resnet32) | vgg11/13/16/19")
    p.add_argument("--method", default=method_default, help="method family, e.g. omp, art")
    p.add_argument("--label", help="run label (default: the method name)")
    p.add_argument("--kappa", type=float, default=0.0, help="pruning rate in [0, 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    p.add_argument("--image-size", type=int, default=None, help="digits only (px)")
    p.add_argument("--data-root", default="results/data")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32, or bf16 autocast on CUDA")
    p.add_argument("--epochs", type=_positive_int, help="dense schedule length (epochs)")
    p.add_argument("--finetune-epochs", type=_positive_int,
                   help="sparse/fine-tune schedule length (epochs)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter (YAML value), e.g. --set lambda_init=5e-6; repeatable",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    p.add_argument("--dense-dir", type=Path, help="the dense run folder this method starts from")
    p.add_argument(
        "--init", type=Path, help="dense checkpoint (model.pt) to start from, instead of --dense-dir"
    )
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        help="torch.compile the training forward with this mode (reduce-overhead: + CUDA "
        "graphs); config `compile`. Default: eager",
    )
    p.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        default=None,
        help="on CUDA, run every step eagerly instead of replaying it from a CUDA graph "
        "(config `cuda_graphs: false`)",
    )
    p.add_argument(
        "--record-failure",
        action="store_true",
        help="on divergence write status 'failed' to metrics.json and exit 0 (the grid goes on)",
    )
    p.add_argument("--log-file", type=Path, help="also append log lines to this file")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module that registers extra methods (config `plugins`); repeatable",
    )


def _spec_from_args(args: argparse.Namespace) -> Any:
    from .methods import get_method
    from .spec import RunSpec

    if args.spec_json:
        try:
            d = json.loads(args.spec_json)
        except ValueError as exc:
            raise ValueError(f"--spec-json is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ValueError("--spec-json must be a JSON object of run-spec keys")
        return RunSpec.from_dict(d)
    if not (args.dataset and args.model and args.method):
        raise ValueError("give --spec-json, or --dataset, --model and --method")
    params = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        params[key] = yaml.safe_load(value)
    d: dict[str, Any] = {
        "dataset": args.dataset,
        "model": args.model,
        "method": args.label or args.method,
        "family": args.method,
        "kappa": args.kappa,
        "seed": args.seed,
        "width": args.width,
        "image_size": args.image_size,
        "data_root": args.data_root,
        "device": args.device,
        "precision": args.precision,
        "params": params,
        "optim": dict(get_method(args.method).optim_defaults),
    }
    if args.epochs is not None:
        d["dense"] = {"epochs": args.epochs, "milestones": [], "gamma": 0.1}
    if args.finetune_epochs is not None:
        d["finetune"] = {"epochs": args.finetune_epochs, "milestones": [], "gamma": 0.1}
    return RunSpec.from_dict(d)


def cmd_run(args: argparse.Namespace) -> int:
    """train / sparsify: one run into one run folder."""
    import torch

    from .methods import load_plugins
    from .runner import DenseFiles, execute

    load_plugins(args.plugin)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = _spec_from_args(args)
    dense = DenseFiles(args.dense_dir, args.init) if (args.dense_dir or args.init) else None
    metrics = execute(
        spec, args.out, dense, record_failure=args.record_failure, compile_mode=args.compile,
        cuda_graphs=args.cuda_graphs,
    )
    if metrics.get("status") == "failed":
        print(f"run failed: {metrics.get('error')}", file=sys.stderr)
        return 0
    print(
        f"{spec.label} {spec.dataset}/{spec.model} kappa={spec.kappa} seed={spec.seed}: "
        f"final test acc {metrics['final_test_acc']:.2f}%, sparsity {metrics['sparsity']:.4f}"
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Download (if allowed), verify and cache a data set."""
    from .data import prepare_dataset

    path = prepare_dataset(
        args.dataset, args.root, download=not args.no_download, image_size=args.image_size
    )
    print(path)
    return 0


def cmd_validate_config(args: argparse.Namespace) -> int:
    """Validate a workflow config file."""
    from .config import load_config

    cfg = load_config(args.config)
    print(f"{args.config}: OK ({len(cfg['datasets'])} data sets, {len(cfg['models'])} models, "
          f"{len(cfg['methods'])} methods, {len(cfg['kappas'])} kappas, {len(cfg['seeds'])} seeds)")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """List registered methods and their parameters with defaults."""
    import dataclasses

    from .methods import METHODS

    for family, cls in sorted(METHODS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{family}: {doc}")
        for f in dataclasses.fields(cls.Params):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            print(f"    {f.name} = {default!r}")
    return 0


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Collect run folders into tables (CSV, Markdown, LaTeX)."""
    from .analysis import collect_runs
    from .analysis.tables import write_replication, write_runs_csv, write_table, write_tables

    if args.summary_only:  # runs.csv + the replication table (the workflow's aggregate rule)
        runs = collect_runs(args.runs)
        paths = [write_runs_csv(runs, args.out)]
        paths += write_replication(args.runs, args.out, args.paper_targets, runs=runs)
        if args.benchmarks is not None:
            from .analysis.runs import write_job_benchmarks

            paths.append(write_job_benchmarks(args.benchmarks, args.out / "job_benchmarks.csv"))
    elif args.dataset and args.model and len(args.dataset) == len(args.model) == 1:
        paths = write_table(args.runs, args.out, args.dataset[0], args.model[0],
                            flops=args.flops)
    else:
        paths = write_tables(
            args.runs,
            args.out,
            paper_targets=args.paper_targets,
            datasets=args.dataset or None,
            models=args.model or None,
        )
    for p in paths:
        print(p)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Render one figure (PNG + PDF) from run folders."""
    from .analysis import NothingToPlotError, plot_figure
    from .analysis.figures import placeholder_figure

    opts = {
        k: v
        for k, v in (
            ("dataset", args.dataset),
            ("model", args.model),
            ("kappa", args.kappa),
            ("seed", args.seed),
            ("method", args.method),
            ("methods", args.methods),
        )
        if v is not None
    }
    try:
        paths = plot_figure(args.figure, args.runs, args.out, **opts)
    except NothingToPlotError as exc:
        if not args.placeholder_if_empty:
            raise
        log.warning("%s: nothing to plot (%s); writing a placeholder figure", args.figure, exc)
        paths = placeholder_figure(args.out, str(exc))
    for p in paths:
        print(p)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A finished run's model as ONNX and/or a sparse state dict."""
    from .export import export_onnx, export_sparse_state

    if not (args.onnx or args.sparse):
        raise ValueError("give --onnx FILE and/or --sparse FILE")
    if args.onnx:
        print(export_onnx(args.run, args.onnx))
    if args.sparse:
        print(export_sparse_state(args.run, args.sparse))
    return 0


def _grid_parallel(cfg: dict[str, Any], parallel: int | None) -> int:
    """Runs at once: --parallel, else the config's GPUs x jobs_per_gpu (1 GPU if none seen)."""
    if parallel:
        return parallel
    from .config import gpu_ids

    return max(len(gpu_ids(cfg)), 1) * cfg["jobs_per_gpu"]


def cmd_estimate(args: argparse.Namespace) -> int:
    """Epochs, jobs and GPU-hours of a config before it starts."""
    from .config import load_config
    from .estimate import format_estimate, grid_jobs, read_table

    cfg = load_config(args.config)
    jobs = grid_jobs(cfg, args.device, read_table(args.table), args.art_epochs)
    print(f"{args.config}: {len(jobs)} training jobs on {args.device} (seconds per epoch from "
          f"{args.table or 'benchmarks/epoch_seconds.csv'}; ART assumed {args.art_epochs} "
          "epochs)")
    print(format_estimate(jobs, _grid_parallel(cfg, args.parallel), args.device))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Finished / running / failed / pending runs of a config, and the ETA."""
    from .config import load_config
    from .estimate import read_table
    from .progress import format_status, grid_status

    overrides = {"results_dir": str(args.results)} if args.results else {}
    cfg = load_config(args.config, overrides)
    runs = grid_status(cfg, args.art_epochs)
    print(f"{args.config}: {len(runs)} runs under {cfg['results_dir']}/runs")
    print(format_status(runs, _grid_parallel(cfg, args.parallel), read_table(args.table),
                        args.device))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    p = _Parser(
        prog="hypersparse",
        description="HyperSparse / ART replication: data, training, sparsification, analysis.",
        formatter_class=_Help,
    )
    p.add_argument("--version", action="version", version=f"hypersparse {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    add_parser = sub.add_parser

    def sub_parser(*args: Any, **kwargs: Any) -> argparse.ArgumentParser:
        """A subcommand: defaults in its --help, -v accepted after the subcommand too."""
        s = add_parser(*args, formatter_class=_Help, **kwargs)
        s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging")
        return s

    sub.add_parser = sub_parser  # type: ignore[method-assign]

    s = sub.add_parser("prepare", help="download, verify and cache a data set")
    s.add_argument("--dataset", required=True, type=_dataset)
    s.add_argument("--root", default="results/data", type=Path)
    s.add_argument("--image-size", type=int, default=None, help="digits only (px)")
    s.add_argument("--no-download", action="store_true", help="never touch the network")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train a dense model (the 0%% baseline)")
    _add_spec_args(s, "dense")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("sparsify", aliases=["prune"], help="run a sparsification method (prune + fine-tune, ART, ...)")
    _add_spec_args(s, None)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("validate-config", help="check a workflow config file")
    s.add_argument("config", type=Path)
    s.set_defaults(func=cmd_validate_config)

    s = sub.add_parser("methods", help="list the registered methods and their parameters")
    s.set_defaults(func=cmd_methods)

    for name, func, what in (
        ("estimate", cmd_estimate, "jobs, epochs and GPU-hours of a config before it starts"),
        ("status", cmd_status, "finished / running / failed / pending runs and the ETA"),
    ):
        s = sub.add_parser(name, help=what)
        s.add_argument("config", type=Path, help="the workflow config (e.g. config/config.yaml)")
        if name == "status":
            s.add_argument("--results", type=Path, help="results_dir (default: the config's)")
        s.add_argument("--device", choices=["gpu", "cpu"], default="gpu",
                       help="which cost-table figures to use")
        s.add_argument("--parallel", type=_positive_int, default=None,
                       help="runs at once (default: visible GPUs x jobs_per_gpu)")
        s.add_argument("--art-epochs", type=_positive_int, default=40,
                       help="ART epochs assumed per ART run (data-dependent)")
        s.add_argument("--table", type=Path, default=None,
                       help="seconds-per-epoch table (default: benchmarks/epoch_seconds.csv)")
        s.set_defaults(func=func)

    s = sub.add_parser("export", help="a finished run's model as ONNX / a sparse state dict")
    s.add_argument("run", type=Path, help="the run folder (results/runs/.../seed0)")
    s.add_argument("--onnx", type=Path, help="write the model as ONNX here")
    s.add_argument("--sparse", type=Path, help="write the state dict with sparse weights here")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("aggregate", help="collect run folders into comparison tables")
    s.add_argument("--runs", type=Path, default=Path("results/runs"))
    s.add_argument("--out", type=Path, default=Path("results/tables"))
    s.add_argument("--paper-targets", type=Path, default=None)
    s.add_argument("--dataset", action="append", type=_dataset,
                   help="restrict to these data sets (repeatable)")
    s.add_argument("--model", action="append", type=_model,
                   help="restrict to these models (repeatable)")
    s.add_argument(
        "--benchmarks",
        type=Path,
        help="with --summary-only: also collect Snakemake's per-job benchmark files from here",
    )
    s.add_argument("--flops", action="store_true",
                   help="add tables of training and inference FLOPs (x dense) per cell")
    s.add_argument(
        "--summary-only",
        action="store_true",
        help="write only runs.csv and the replication table (no per-grid tables)",
    )
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("plot", help="render one figure from run folders")
    s.add_argument("figure", choices=FIGURE_NAMES, help="which figure (see README, Figures)")
    s.add_argument("--runs", type=Path, default=Path("results/runs"))
    s.add_argument("--out", type=Path, required=True, help="output path without extension")
    s.add_argument("--dataset", type=_dataset)
    s.add_argument("--model", type=_model)
    s.add_argument("--kappa", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--method", help="the run label to plot (hs_gradient; default art_hs)")
    s.add_argument("--methods", help="comma-separated run labels (default: all / art_hs,art_l1,art_l2)")
    s.add_argument(
        "--placeholder-if-empty",
        action="store_true",
        help="when there is nothing to plot (e.g. every ART run failed) write a figure saying so",
    )
    s.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hypersparse`` console script."""
    args = build_parser().parse_args(argv)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if getattr(args, "log_file", None):
        args.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=handlers,
    )
    for noisy in ("fontTools", "matplotlib", "PIL"):  # font subsetting chatter when saving PDFs
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .errors import UserError

    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"hypersparse: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, KeyError, FileNotFoundError, ImportError, TypeError) as exc:
        print(f"hypersparse: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hypersparse: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2


def _os_error_line(exc: OSError) -> str:
    """One line for a file-system error: what failed, where, and what to do."""
    import errno

    where = f" {exc.filename}" if exc.filename else ""
    hints = {
        errno.ENOSPC: "free disk space or choose another --out / results_dir",
        errno.EFBIG: "the file size limit is reached: free space or raise the limit",
        errno.EDQUOT: "the disk quota is reached: free space or choose another --out",
        errno.EROFS: "that file system is read-only: choose another --out / results_dir",
        errno.EACCES: "no permission there: choose another --out / results_dir",
        errno.EPERM: "no permission there: choose another --out / results_dir",
        errno.ENOTDIR: "a file is in the way of that path: choose another --out",
        errno.EEXIST: "a file is in the way of that path: choose another --out",
        errno.EIO: "is the disk full? free space or choose another --out / results_dir",
    }
    hint = hints.get(exc.errno or -1, "check the path and the disk")
    return f"cannot write or read{where}: {exc.strerror or exc}; {hint}"


if __name__ == "__main__":
    sys.exit(main())
