# Evaluation stage: descriptors of every trained run -> one evaluate job per run (every descriptor x
# protocol from one load of the features and manifest) -> one tidy table over all runs and seeds.


# Collecting the metrics files into two tables takes seconds: not worth a queue wait.
localrules:
    aggregate,


rule extract:
    input:
        model="results/runs/{ds}/{variant}/seed{seed}/model.pt",
        manifest="results/data/{ds}/manifest.parquet",
        settings=dataset_settings("extract"),
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
        settings_sha256=settings_digest("extract"),
        operational=operational_flags("extract"),
    shell:
        "python -m agnet extract --settings {input.settings:q} --settings-sha256 {params.settings_sha256} --model {input.model:q} --manifest {input.manifest:q}"
        " --out {output.features:q} {params.operational} --no-progress > {log:q} 2>&1"


rule evaluate:
    input:
        features="results/runs/{ds}/{variant}/seed{seed}/features.pt",
        manifest="results/data/{ds}/manifest.parquet",
        model="results/runs/{ds}/{variant}/seed{seed}/model.pt",
        settings=dataset_settings("evaluate"),
    output:
        metrics="results/runs/{ds}/{variant}/seed{seed}/metrics.json",
        queries="results/runs/{ds}/{variant}/seed{seed}/queries.parquet",
    log:
        "results/logs/{ds}/evaluate/{variant}-seed{seed}.log",
    benchmark:
        "results/benchmarks/{ds}/evaluate/{variant}-seed{seed}.tsv"
    wildcard_constraints:
        seed=r"\d+",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        settings_sha256=settings_digest("evaluate"),
    shell:
        "python -m agnet evaluate --settings {input.settings:q} --settings-sha256 {params.settings_sha256} --features {input.features:q}"
        " --manifest {input.manifest:q} --model {input.model:q} -o {output.metrics:q} --queries {output.queries:q}"
        " > {log:q} 2>&1"


rule aggregate:
    input:
        metrics=metrics_targets(),
    output:
        summary=report(
            "results/metrics/summary.csv",
            caption="../report/metrics.rst",
            category="Metrics",
        ),
        summary_parquet="results/metrics/summary.parquet",
        runs=report(
            "results/metrics/runs.csv",
            caption="../report/metrics.rst",
            category="Metrics",
        ),
        runs_parquet="results/metrics/runs.parquet",
        cmc="results/metrics/cmc.parquet",
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out_dir=lambda wc, output: str(Path(output.summary).parent),
    shell:
        "python -m agnet aggregate {input.metrics:q} --out {params.out_dir:q} > {log:q} 2>&1"
