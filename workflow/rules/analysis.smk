# Analysis: tables and figures built only from run folders (rebuildable without training).

FIGURES_PER_GRID = ["acc_vs_sparsity", "layer_density", "kernel_patterns"]
FIGURES_ART = ["hs_gradient", "exploration", "art_termination", "magnitudes"]
TABLE_EXTS = ("csv", "md", "tex")


def table_files(dataset, model):
    return [f"{RES}/tables/{dataset}_{model}.{ext}" for ext in TABLE_EXTS]


def figure_files(name, dataset, model):
    return [f"{FIGS}/{name}_{dataset}_{model}.{ext}" for ext in ("png", "pdf")]


def all_targets():
    out = list(all_runs())
    out += [f"{RES}/tables/runs.csv", f"{RES}/tables/replication.md"]
    for d in CFG["datasets"]:
        for m in CFG["models"]:
            out += table_files(d, m)
            for name in FIGURES_PER_GRID + (FIGURES_ART if ART else []):
                out += figure_files(name, d, m)
    return out


rule table:
    input:
        lambda wc: grid_runs(wc.dataset, wc.model),
    output:
        report(f"{RES}/tables/{{dataset}}_{{model}}.csv", caption="../report/table.rst", category="Tables"),
        f"{RES}/tables/{{dataset}}_{{model}}.md",
        f"{RES}/tables/{{dataset}}_{{model}}.tex",
    log:
        f"{RES}/logs/tables/{{dataset}}_{{model}}.log",
    localrule: True
    shell:
        "hypersparse aggregate --runs {RUNS:q} --out {RES}/tables --dataset {wildcards.dataset} "
        "--model {wildcards.model} > {log} 2>&1"


rule aggregate:
    input:
        all_runs(),
    output:
        runs=report(f"{RES}/tables/runs.csv", caption="../report/runs.rst", category="Tables"),
        replication=report(f"{RES}/tables/replication.md", caption="../report/replication.rst", category="Tables"),
    log:
        f"{RES}/logs/tables/aggregate.log",
    localrule: True
    params:
        targets=str(Path(workflow.basedir).parent / "config" / "paper_targets.csv"),
    shell:
        "hypersparse aggregate --runs {RUNS:q} --out {RES}/tables --paper-targets {params.targets:q} "
        "--summary-only > {log} 2>&1"


rule figure:
    input:
        lambda wc: grid_runs(wc.dataset, wc.model),
    output:
        png=report(f"{FIGS}/{{figure}}_{{dataset}}_{{model}}.png", caption="../report/{figure}.rst", category="Figures"),
        pdf=f"{FIGS}/{{figure}}_{{dataset}}_{{model}}.pdf",
    log:
        f"{RES}/logs/figures/{{figure}}_{{dataset}}_{{model}}.log",
    wildcard_constraints:
        figure="|".join(FIGURES_PER_GRID + FIGURES_ART),
    localrule: True
    params:
        kappa=lambda wc: f"--kappa {CFG['figures']['kappa']}" if CFG["figures"]["kappa"] is not None else "",
    shell:
        "hypersparse plot {wildcards.figure} --runs {RUNS:q} --out {FIGS}/{wildcards.figure}_{wildcards.dataset}_{wildcards.model} "
        "--dataset {wildcards.dataset} --model {wildcards.model} {params.kappa} > {log} 2>&1"
