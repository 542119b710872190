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
from hypersparse.runner import FINAL_DIR, finished

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
ART = [
    m for m in CFG["methods"] if hsconfig.method_entry(m, CFG["methods"][m])[0] == "art"
]
NON_ART = [m for m in SPARSE + KAPPA_FREE if m not in ART]
SNAPSHOTS = hsconfig.snapshot_epochs(CFG)
RUN = f"{RUNS}/{{dataset}}/{{model}}/{{method}}/k{{kappa}}/seed{{seed}}"
RUN_FILES = ("metrics.json", "model.pt", "history.csv", "spec.json")


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),
    model=r"resnet[0-9]+|vgg[0-9]+",
    kappa=r"[0-9.]+",
    seed=r"[0-9]+",


TRAIN_RULES = ("dense", "sparse", "art")
_FINISHED = {}


def is_finished(run_dir):
    """A finished run folder (metrics.json, or its sealed copy in .final/)."""
    if run_dir not in _FINISHED:
        _FINISHED[run_dir] = finished(run_dir) or finished(f"{run_dir}/{FINAL_DIR}")
    return _FINISHED[run_dir]


def wc_run_dir(wc, method=None, kappa=None):
    """The run folder of a training job's wildcards."""
    return hsconfig.run_dir(
        CFG,
        wc.dataset,
        wc.model,
        method or wc.method,
        wc.kappa if kappa is None else kappa,
        wc.seed,
    )


def train_data(wc):
    """The data cache a training job reads; none for a finished run, which never reruns
    because an input changed (a finished run is never retrained)."""
    run = wc_run_dir(wc, "dense", 0.0) if "method" not in wc.keys() else wc_run_dir(wc)
    return [] if is_finished(run) else data_files(wc.dataset)


def data_files(dataset):
    """The prepared cache of a data set (train/test arrays and meta.json)."""
    folder = prepared_dir(
        dataset, DATA, CFG["image_size"] if dataset.startswith("digits") else None
    )
    return [f"{folder}/{name}" for name in ("train.npz", "test.npz", "meta.json")]


def spec_json(wc, method=None, kappa=None):
    """The resolved run spec of a job, as JSON (Snakemake reruns a job when it changes)."""
    method = method or wc.method
    kappa = float(wc.kappa if kappa is None else kappa)
    return json.dumps(
        hsconfig.run_spec(CFG, wc.dataset, wc.model, method, kappa, int(wc.seed)),
        sort_keys=True,
    )


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
    run = wc_run_dir(wc, "dense", 0.0) if "method" not in wc.keys() else wc_run_dir(wc)
    return DEVICE_OF.get(run)


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
    dense = hsconfig.run_dir(CFG, wc.dataset, wc.model, "dense", 0.0, wc.seed)
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
                outputs=[Path(p) for p in job.output],
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
FIGURES_ART = ["hs_gradient", "exploration", "art_termination", "magnitudes"]
TABLE_EXTS = ("csv", "md", "tex")


def table_files(dataset, model):
    return [f"{RES}/tables/{dataset}_{model}.{ext}" for ext in TABLE_EXTS]


def figure_files(name, dataset, model):
    return [f"{FIGS}/{name}_{dataset}_{model}.{ext}" for ext in ("png", "pdf")]


def runs_root(metrics_path):
    """results/runs from results/runs/{dataset}/{model}/{method}/k{kappa}/seed{seed}/metrics.json."""
    return str(Path(metrics_path).parents[5])


def all_targets():
    out = list(all_runs())
    out += [f"{RES}/tables/runs.csv", f"{RES}/tables/replication.md"]
    for d in DATASETS:
        for m in CFG["models"]:
            out += table_files(d, m)
            for name in FIGURES_PER_GRID + (FIGURES_ART if ART else []):
                out += figure_files(name, d, m)
    return out


def figure_kappa_flag(figure):
    """--kappa of a figure: figures.hs_kappa for the ART trace figures, else figures.kappa."""
    if figure in ("acc_vs_sparsity", "acc_vs_flops"):  # span every kappa
        return ""
    opts = CFG["figures"]
    kappa = (
        opts["hs_kappa"]
        if figure in FIGURES_ART and opts["hs_kappa"] is not None
        else opts["kappa"]
    )
    return "" if kappa is None else f"--kappa {kappa}"


def figure_method_flags(figure):
    """Which run labels the ART figures show: the config's ART entries, HS first."""
    if figure not in FIGURES_ART:
        return ""
    regs = ("hs", "l1", "l2")
    by_reg = sorted(
        ART,
        key=lambda m: regs.index((CFG["methods"][m] or {}).get("regularizer", "hs")),
    )
    if figure == "hs_gradient":
        return f"--method {by_reg[0]}"
    return f"--methods {','.join(by_reg)}"


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
