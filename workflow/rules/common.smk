# Config loading and validation, grid enumeration, paths and spec helpers.
import json
import os
import re
import sys
from pathlib import Path

# Jobs run `python -m hypersparse` with this checkout's src/ on PYTHONPATH: they work in the
# project's venv and in a conda environment built from environment.yml (`--sdm conda`), which
# holds the dependencies but not the package itself. Set before the imports below, so that
# they also come from this checkout.
SRC = str(Path(workflow.basedir).parent / "src")
_paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
if SRC not in _paths:
    os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (SRC, *_paths) if p))
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from hypersparse import config as hsconfig
from hypersparse import preflight
from hypersparse.data import prepared_dir
from hypersparse.data.names import is_resizable
from hypersparse.runner import FINAL_DIR, finished
from hypersparse.spec import RUN_DEPTH, RUN_PATTERN

# config/config.yaml is the default; --configfile replaces it whole (no merging of method
# lists), --config overrides top-level keys of whichever file is used.
try:
    if not workflow.overwrite_configfiles:
        _base = hsconfig.read_yaml(
            Path(workflow.basedir).parent / "config" / "config.yaml"
        )
        _base.update(config)
        config.clear()
        config.update(_base)
    for _file in workflow.overwrite_configfiles or []:
        hsconfig.read_yaml(
            _file
        )  # Snakemake's own loader lets a duplicate key win silently
    CFG = hsconfig.validate_config(config)
except hsconfig.ConfigError as _exc:
    raise WorkflowError(str(_exc)) from None

RES = CFG["results_dir"]
DATASETS = hsconfig.grid_datasets(CFG)  # pilot subsets carry their own names
RUNS = f"{RES}/runs"
FIGS = CFG["figures_dir"]
DATA = CFG["data_root"]
SPARSE = hsconfig.sparse_methods(CFG)
KAPPA_FREE = hsconfig.kappa_free_methods(CFG)
SNAPSHOTS = hsconfig.snapshot_epochs(CFG)
# The one spelling of a run's place (spec.RUN_PATTERN), here as the training rules' wildcards.
RUN = f"{RUNS}/{RUN_PATTERN}"
RUN_LOG = f"{RES}/logs/{RUN_PATTERN}.log"
RUN_BENCHMARK = f"{RES}/benchmarks/{RUN_PATTERN}.tsv"
RUN_FILES = ("metrics.json", "model.pt", "history.csv", "spec.json")


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),
    model=r"resnet[0-9]+|vgg[0-9]+",
    kappa=r"[0-9.]+",
    seed=r"[0-9]+",


TRAIN_RULES = ("dense", "sparse")
_FINISHED = {}


def is_finished(run_dir):
    """A finished run folder (metrics.json, or its sealed copy in .final/)."""
    if run_dir not in _FINISHED:
        _FINISHED[run_dir] = finished(run_dir) or finished(f"{run_dir}/{FINAL_DIR}")
    return _FINISHED[run_dir]


def wc_run_dir(wc):
    """The run folder of a training job's wildcards."""
    return hsconfig.run_dir(CFG, wc.dataset, wc.model, wc.method, wc.kappa, wc.seed)


def train_data(wc):
    """The data cache a training job reads; none for a finished run, which never reruns
    because an input changed (a finished run is never retrained)."""
    return [] if is_finished(wc_run_dir(wc)) else data_files(wc.dataset)


def data_files(dataset):
    """The prepared cache of a data set (train/test arrays and meta.json)."""
    folder = prepared_dir(
        dataset, DATA, CFG["image_size"] if is_resizable(dataset) else None
    )
    return [f"{folder}/{name}" for name in ("train.npz", "test.npz", "meta.json")]


def spec_json(wc):
    """The resolved run spec of a job, as JSON (Snakemake reruns a job when it changes)."""
    spec = hsconfig.run_spec(
        CFG, wc.dataset, wc.model, wc.method, float(wc.kappa), int(wc.seed)
    )
    return json.dumps(spec, sort_keys=True)


def grid_runs(dataset, model, methods=None):
    """metrics.json of every run of one (data set, model) in the grid."""
    cells = [("dense", 0.0)]
    for m in methods if methods is not None else SPARSE + KAPPA_FREE:
        cells += [
            (m, k) for k in (hsconfig.method_kappas(CFG, m) if m in SPARSE else [0.0])
        ]
    return [
        f"{hsconfig.run_dir(CFG, dataset, model, m, k, s)}/metrics.json"
        for m, k in cells
        for s in CFG["seeds"]
    ]


def all_runs():
    return [f for d in DATASETS for m in CFG["models"] for f in grid_runs(d, m)]


# GPUs of this machine: each training job is pinned to one (CUDA_VISIBLE_DEVICES) and takes
# one unit of the resource gpu_<i> of its device, of which there are jobs_per_gpu (set below
# unless given with --resources), so Snakemake itself runs at most that many per GPU.
GPU_IDS = hsconfig.gpu_ids(CFG)
for _i in range(len(GPU_IDS)):
    workflow.global_resources.setdefault(f"gpu_{_i}", CFG["jobs_per_gpu"])


def _assign_devices():
    """Run folder -> GPU index: every training job of the grid, longest first, on the GPU
    with the least work so far (epochs x seconds per epoch from the cost table)."""
    from hypersparse.estimate import grid_jobs

    load = [0.0] * len(GPU_IDS)
    out = {}
    jobs = grid_jobs(CFG, "gpu", art_epochs=40, strict=False)
    for j in sorted(
        jobs,
        key=lambda j: (
            -j.epochs * max(j.seconds_per_epoch, 1.0),
            j.dataset,
            j.model,
            j.label,
            j.kappa,
            j.seed,
        ),
    ):
        d = min(range(len(GPU_IDS)), key=lambda i: (load[i], i))
        load[d] += j.epochs * max(j.seconds_per_epoch, 1.0)
        out[hsconfig.run_dir(CFG, j.dataset, j.model, j.label, j.kappa, j.seed)] = d
    return out


DEVICE_OF = _assign_devices() if GPU_IDS else {}


def job_device(wc):
    """GPU index of a training job (None without GPUs)."""
    return DEVICE_OF.get(wc_run_dir(wc))


def train_resources():
    """Memory, runtime and the GPU slot of a training job."""
    res = dict(
        mem_mb=CFG["resources"]["train_mem_mb"],
        runtime=CFG["resources"]["train_runtime_min"],
        pin=pin_device,  # a resource, not a param: a new GPU layout reruns nothing
    )
    for i in range(len(GPU_IDS)):
        res[f"gpu_{i}"] = lambda wc, i=i: int(job_device(wc) == i)
    return res


def pin_device(wc):
    """CUDA_VISIBLE_DEVICES=<id> for a job run on this machine (a cluster job gets its GPU
    from the scheduler instead)."""
    d = job_device(wc)
    if d is None or workflow.remote_exec:
        return ""
    return f"CUDA_VISIBLE_DEVICES={GPU_IDS[d]} "


def dense_inputs(wc):
    """The dense run's files a method starts from (none for a finished run)."""
    if is_finished(wc_run_dir(wc)):
        return []
    dense = hsconfig.run_dir(CFG, wc.dataset, wc.model, "dense", 0, wc.seed)
    return [f"{dense}/{name}" for name in hsconfig.dense_inputs(CFG, wc.method)]


def planned_runs():
    """The training jobs this invocation is about to run, for the preflight checks."""
    runs = []
    for job in workflow.dag.needrun_jobs():
        if job.rule.name not in TRAIN_RULES:
            continue
        runs.append(
            preflight.PlannedRun(
                run_dir=Path(job.output.metrics).parent,
                spec=json.loads(job.params.spec),
                data=[Path(p) for p in job.input.get("data", [])],
                dense=[Path(p) for p in job.input.get("dense", [])],
                outputs=[Path(p) for p in job.output]
                + [
                    Path(job.output.metrics).parent / f
                    for f in hsconfig.extra_outputs(CFG, job.wildcards.method)
                ],
            )
        )
    return runs


def preflight_checks():
    """Before any job starts (and so before Snakemake deletes any output): lock results_dir,
    then check the run folders and existing inputs of the training jobs to run."""
    try:
        preflight.lock_results_dir(RES)
        problems = preflight.check_planned_runs(planned_runs())
    except preflight.PreflightError as exc:
        raise WorkflowError(str(exc)) from None
    if problems:
        shown = problems[:10] + (
            [f"... and {len(problems) - 10} more"] if len(problems) > 10 else []
        )
        raise WorkflowError(
            "the workflow did not start; nothing was run or deleted:\n  "
            + "\n  ".join(shown)
        )


def dense_flag(wc, input):
    return f"--dense-dir {os.path.dirname(input.dense[0])}" if input.dense else ""


FIGURES_PER_GRID = [
    "acc_vs_sparsity",
    "acc_vs_flops",
    "layer_density",
    "kernel_patterns",
]
FIGURES_OF_METHODS = hsconfig.method_figures(
    CFG
)  # e.g. ART's trace figures: their labels
TABLE_EXTS = ("csv", "md", "tex")


def table_files(dataset, model):
    return [f"{RES}/tables/{dataset}_{model}.{ext}" for ext in TABLE_EXTS]


def figure_files(name, dataset, model):
    return [f"{FIGS}/{name}_{dataset}_{model}.{ext}" for ext in ("png", "pdf")]


def runs_root(metrics_path):
    """The runs folder of a run's metrics.json (RUN_PATTERN levels above its folder)."""
    return str(Path(metrics_path).parents[RUN_DEPTH])


def all_targets():
    out = list(all_runs())
    out += [f"{RES}/tables/runs.csv", f"{RES}/tables/replication.md"]
    for d in DATASETS:
        for m in CFG["models"]:
            out += table_files(d, m)
            for name in FIGURES_PER_GRID + list(FIGURES_OF_METHODS):
                out += figure_files(name, d, m)
    return out


def figure_kappa_flag(figure):
    """--kappa of a figure: figures.hs_kappa for the methods' own (ART trace) figures, else
    figures.kappa."""
    if figure in ("acc_vs_sparsity", "acc_vs_flops"):  # span every kappa
        return ""
    opts = CFG["figures"]
    kappa = (
        opts["hs_kappa"]
        if figure in FIGURES_OF_METHODS and opts["hs_kappa"] is not None
        else opts["kappa"]
    )
    return "" if kappa is None else f"--kappa {kappa}"


def figure_method_flags(figure):
    """Which run labels a method's own figure shows (the method's order: ART's HS first)."""
    labels = FIGURES_OF_METHODS.get(figure)
    return f"--methods {','.join(labels)}" if labels else ""


def job_flags():
    """Execution flags of training jobs: --plugin per config `plugins` module (so the jobs
    register them too) and --compile MODE for config `compile`. The rules keep the params key
    `plugins` for these, so runs made before `compile` existed are not re-triggered."""
    flags = [f"--plugin {m}" for m in CFG["plugins"]]
    mode = CFG["compile"]
    if mode:
        flags.append(f"--compile {'default' if mode is True else mode}")
    if not CFG["cuda_graphs"]:
        flags.append("--no-cuda-graphs")
    return " ".join(flags)
