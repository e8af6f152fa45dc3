# Evaluation stage: descriptors of every trained run -> CMC/mAP per descriptor and protocol ->
# one tidy table over all runs and seeds.


# Collecting the metrics files into two tables takes seconds: not worth a queue wait.
localrules:
    aggregate,


rule extract:
    input:
        model="results/runs/{ds}/{variant}/seed{seed}/model.pt",
        manifest="results/data/{ds}/manifest.parquet",
    output:
        features="results/runs/{ds}/{variant}/seed{seed}/features.pt",
    log:
        "results/logs/{ds}/extract/{variant}-seed{seed}.log",
    benchmark:
        "results/benchmarks/{ds}/extract/{variant}-seed{seed}.tsv"
    wildcard_constraints:
        seed=r"\d+",
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    params:
        configs=config_args,
    shell:
        "python -m agnet extract {params.configs} --model {input.model} --manifest {input.manifest}"
        " --out {output.features} --threads {threads} --no-progress > {log} 2>&1"


rule evaluate:
    input:
        features="results/runs/{ds}/{variant}/seed{seed}/features.pt",
        manifest="results/data/{ds}/manifest.parquet",
    output:
        metrics="results/runs/{ds}/{variant}/seed{seed}/metrics/{descriptor}/{protocol}.json",
    log:
        "results/logs/{ds}/evaluate/{variant}-seed{seed}-{descriptor}-{protocol}.log",
    wildcard_constraints:
        seed=r"\d+",
        descriptor="Attr|ID|All",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        configs=config_args,
    shell:
        "python -m agnet evaluate {params.configs} --features {input.features} --manifest {input.manifest}"
        " --descriptor {wildcards.descriptor} --protocol {wildcards.protocol} -o {output.metrics} > {log} 2>&1"


rule aggregate:
    input:
        metrics=metrics_targets(),
    output:
        summary="results/metrics/summary.csv",
        runs="results/metrics/runs.csv",
    log:
        "results/logs/aggregate.log",
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m agnet aggregate {input.metrics} --out results/metrics > {log} 2>&1"
