# Dense training: the 0% column, and the checkpoints every other method starts from.


rule dense:
    input:
        data=train_data,
    output:
        **{
            f.split(".")[0]: f"{RUNS}/{{dataset}}/{{model}}/dense/k0/seed{{seed}}/{f}"
            for f in RUN_FILES
        },
        snapshots=[
            f"{RUNS}/{{dataset}}/{{model}}/dense/k0/seed{{seed}}/snapshot_e{e}.pt"
            for e in SNAPSHOTS
        ],
    log:
        f"{RES}/logs/{{dataset}}/{{model}}/dense/k0/seed{{seed}}.log",
    benchmark:
        f"{RES}/benchmarks/{{dataset}}/{{model}}/dense/k0/seed{{seed}}.tsv"
    group:
        "train_dense"
    conda:
        "../../environment.yml"
    threads: CFG["threads"]
    resources:
        **train_resources(),
    params:
        plugins=job_flags(),
        spec=lambda wc: spec_json(wc, "dense", 0.0),
        out=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "{resources.pin}python -m hypersparse train --spec-json {params.spec:q} --out {params.out:q} --threads {threads} "
        "--record-failure {params.plugins} > {log} 2>&1"
