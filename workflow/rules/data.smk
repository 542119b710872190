# Data preparation: download (the only network access), verify checksums, cache once.


rule prepare_data:
    output:
        # Every image size of a resizable data set (digits) shares this rule via the folder.
        f"{DATA}/{{dataset}}/{{variant}}/train.npz",
        f"{DATA}/{{dataset}}/{{variant}}/test.npz",
        f"{DATA}/{{dataset}}/{{variant}}/meta.json",
    log:
        f"{RES}/logs/prepare/{{dataset}}_{{variant}}.log",
    wildcard_constraints:
        variant=r"prepared(_s[0-9]+_seed[0-9]+)?",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        root=lambda wc, output: str(Path(output[0]).parents[2]),
        size=lambda wc: (
            f"--image-size {CFG['image_size']}" if is_resizable(wc.dataset) else ""
        ),
        download="" if CFG["download"] else "--no-download",
    shell:
        "python -m hypersparse prepare --dataset {wildcards.dataset} --root {params.root:q} {params.size} "
        "{params.download} > {log} 2>&1"
