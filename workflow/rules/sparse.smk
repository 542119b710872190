# Every sparsification method through one rule; a method's own files (e.g. ART's traces)
# are its `extra_outputs`, written before metrics.json and checked by the preflight.


rule sparse:
    input:
        data=train_data,
        dense=dense_inputs,
    output:
        **{f.split(".")[0]: f"{RUN}/{f}" for f in RUN_FILES},
    log:
        RUN_LOG,
    benchmark:
        RUN_BENCHMARK
    wildcard_constraints:
        method="|".join(map(re.escape, SPARSE + KAPPA_FREE)) or "__none__",
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
