# Dataset stage: obtain (synthesise or fetch) -> verify -> manifest, for every dataset in `run`.


# Downloads need the internet (often only the head node has it); verification reads every file once and
# must see the same file system as the download. Both are I/O, not compute.
localrules:
    fetch,
    verify,


rule synthesize:
    output:
        root=directory("results/data/{ds}/root"),
        locator="results/data/{ds}/dataset.json",
    log:
        "results/logs/{ds}/synthesize.log",
    benchmark:
        "results/benchmarks/{ds}/synthesize.tsv"
    wildcard_constraints:
        ds=one_of(SYNTHETIC),
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        fmt=lambda wc: dataset(wc)["format"],
        size=synth_size_args,
        seed=lambda wc: dataset(wc)["source"]["seed"],
    shell:
        "(python -m agnet data synth {params.fmt} {output.root:q} {params.size}"
        " --seed {params.seed} --workers {threads}"
        " && python -m agnet data fetch {params.fmt} --directory {output.root:q}"
        " --dest results/data/{wildcards.ds} -o {output.locator:q} --quiet) > {log:q} 2>&1"


rule fetch:
    output:
        locator="results/data/{ds}/dataset.json",
    log:
        "results/logs/{ds}/fetch.log",
    benchmark:
        "results/benchmarks/{ds}/fetch.tsv"
    wildcard_constraints:
        ds=one_of(EXTERNAL),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=600,
    params:
        fmt=lambda wc: dataset(wc)["format"],
        source=fetch_args,
    shell:
        "python -m agnet data fetch {params.fmt} {params.source} --dest results/data/{wildcards.ds}"
        " -o {output.locator:q} > {log:q} 2>&1"


rule verify:
    input:
        locator="results/data/{ds}/dataset.json",
    output:
        report="results/data/{ds}/verify.json",
    log:
        "results/logs/{ds}/verify.log",
    benchmark:
        "results/benchmarks/{ds}/verify.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        fmt=lambda wc: dataset(wc)["format"],
        strict=lambda wc: "--strict" if dataset(wc)["strict"] else "",
    shell:
        "python -m agnet data verify {params.fmt} {input.locator:q} {params.strict} -o {output.report:q} > {log:q} 2>&1"


rule manifest:
    input:
        locator="results/data/{ds}/dataset.json",
        # the manifest waits for a passing verification, but a re-verification alone (e.g. `strict` toggled: a
        # check, not the data) does not rebuild it and retrain everything downstream
        report=ancient("results/data/{ds}/verify.json"),
    output:
        manifest="results/data/{ds}/manifest.parquet",
    log:
        "results/logs/{ds}/manifest.log",
    benchmark:
        "results/benchmarks/{ds}/manifest.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        fmt=lambda wc: dataset(wc)["format"],
        train_vehicles=lambda wc: dataset(wc)["train_vehicles"],
        holdout=lambda wc: dataset(wc)["holdout_vehicles"],
        holdout_seed=lambda wc: dataset(wc)["holdout_seed"],
    shell:
        "python -m agnet data manifest {params.fmt} {input.locator:q} -o {output.manifest:q}"
        " --train-vehicles {params.train_vehicles} --holdout-vehicles {params.holdout}"
        " --holdout-seed {params.holdout_seed} > {log:q} 2>&1"
