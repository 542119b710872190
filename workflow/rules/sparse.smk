# Every sparsification method through one rule family: `sparse` for all methods, `art` for
# the ART variants (they also write the trace files the analysis figures read).


rule sparse:
    input:
        data=train_data,
        dense=dense_inputs,
    output:
        **{f.split(".")[0]: f"{RUN}/{f}" for f in RUN_FILES},
    log:
        f"{RES}/logs/{{dataset}}/{{model}}/{{method}}/k{{kappa}}/seed{{seed}}.log",
    benchmark:
        f"{RES}/benchmarks/{{dataset}}/{{model}}/{{method}}/k{{kappa}}/seed{{seed}}.tsv"
    wildcard_constraints:
        method="|".join(NON_ART) or "__none__",
    group:
        "train_runs"
    conda:
        "../../environment.yml"
    threads: CFG["threads"]
    resources:
        **train_resources(),
    params:
        plugins=job_flags(),
        spec=spec_json,
        out=lambda wc, output: os.path.dirname(output.metrics),
        dense=dense_flag,
    shell:
        "{resources.pin}python -m hypersparse sparsify --spec-json {params.spec:q} --out {params.out:q} {params.dense} "
        "--threads {threads} --record-failure {params.plugins} > {log} 2>&1"


rule art:
    input:
        data=train_data,
        dense=dense_inputs,
    output:
        **{f.split(".")[0]: f"{RUN}/{f}" for f in RUN_FILES},
        trace=f"{RUN}/art_trace.csv",
        trace_npz=f"{RUN}/art_trace.npz",
    log:
        f"{RES}/logs/{{dataset}}/{{model}}/{{method}}/k{{kappa}}/seed{{seed}}.log",
    benchmark:
        f"{RES}/benchmarks/{{dataset}}/{{model}}/{{method}}/k{{kappa}}/seed{{seed}}.tsv"
    wildcard_constraints:
        method="|".join(ART) or "__none__",
    group:
        "train_runs"
    conda:
        "../../environment.yml"
    threads: CFG["threads"]
    resources:
        **train_resources(),
    params:
        plugins=job_flags(),
        spec=spec_json,
        out=lambda wc, output: os.path.dirname(output.metrics),
        dense=dense_flag,
    shell:
        "{resources.pin}python -m hypersparse sparsify --spec-json {params.spec:q} --out {params.out:q} {params.dense} "
        "--threads {threads} --record-failure {params.plugins} > {log} 2>&1"
