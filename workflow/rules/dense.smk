# Dense training: the 0% column, and the checkpoints every other method starts from.


rule dense:
    input:
        data=train_data,
    output:
        **{f.split(".")[0]: f"{RUN}/{f}" for f in RUN_FILES},
        snapshots=[f"{RUN}/snapshot_e{e}.pt" for e in SNAPSHOTS],
    log:
        RUN_LOG,
    benchmark:
        RUN_BENCHMARK
    wildcard_constraints:
        method="dense",
        kappa="0",
    group:
        "train_dense"
    conda:
        "../../environment.yml"
    threads: CFG["threads"]
    resources:
        **train_resources(),
    params:
        plugins=job_flags(),
        spec=spec_json,
        out=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "{resources.pin}python -m hypersparse train --spec-json {params.spec:q} --out {params.out:q} --threads {threads} "
        "--record-failure {params.plugins} > {log} 2>&1"
