# Analysis: tables and figures built only from run folders (rebuildable without training).


rule table:
    input:
        lambda wc: grid_runs(wc.dataset, wc.model),
    output:
        report(
            f"{RES}/tables/{{dataset}}_{{model}}.csv",
            caption="../report/table.rst",
            category="Tables",
        ),
        f"{RES}/tables/{{dataset}}_{{model}}.md",
        f"{RES}/tables/{{dataset}}_{{model}}.tex",
    log:
        f"{RES}/logs/tables/{{dataset}}_{{model}}.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        runs=lambda wc, input: runs_root(input[0]),
        out=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "python -m hypersparse aggregate --runs {params.runs:q} --out {params.out:q} --dataset {wildcards.dataset} "
        "--model {wildcards.model} > {log} 2>&1"


rule aggregate:
    input:
        all_runs(),
    output:
        runs=report(
            f"{RES}/tables/runs.csv", caption="../report/runs.rst", category="Tables"
        ),
        replication=report(
            f"{RES}/tables/replication.md",
            caption="../report/replication.rst",
            category="Tables",
        ),
        benchmarks=report(
            f"{RES}/tables/job_benchmarks.csv",
            caption="../report/job_benchmarks.rst",
            category="Benchmarks",
        ),
    log:
        f"{RES}/logs/tables/aggregate.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        runs=lambda wc, input: runs_root(input[0]),
        out=lambda wc, output: os.path.dirname(output[0]),
        targets=str(Path(workflow.basedir).parent / "config" / "paper_targets.csv"),
        bench=lambda wc, output: str(Path(output.runs).parents[1] / "benchmarks"),
    shell:
        "python -m hypersparse aggregate --runs {params.runs:q} --out {params.out:q} --paper-targets {params.targets:q} "
        "--summary-only --benchmarks {params.bench:q} > {log} 2>&1"


rule figure:
    input:
        lambda wc: grid_runs(wc.dataset, wc.model),
    output:
        png=report(
            f"{FIGS}/{{figure}}_{{dataset}}_{{model}}.png",
            caption="../report/figure.rst",
            category="Figures",
        ),
        pdf=f"{FIGS}/{{figure}}_{{dataset}}_{{model}}.pdf",
    log:
        f"{RES}/logs/figures/{{figure}}_{{dataset}}_{{model}}.log",
    wildcard_constraints:
        figure="|".join(FIGURES_PER_GRID + list(FIGURES_OF_METHODS)),
    localrule: True
    conda:
        "../../environment.yml"
    params:
        runs=lambda wc, input: runs_root(input[0]),
        out=lambda wc, output: output.png[: -len(".png")],
        kappa=lambda wc: figure_kappa_flag(wc.figure),
        methods=lambda wc: figure_method_flags(wc.figure),
    shell:
        "python -m hypersparse plot {wildcards.figure} --runs {params.runs:q} --out {params.out:q} "
        "--dataset {wildcards.dataset} --model {wildcards.model} {params.kappa} {params.methods} "
        "--placeholder-if-empty > {log} 2>&1"
