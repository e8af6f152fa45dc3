# Training stage: one job per dataset x variant x seed (Tables III/IV rows), after the ImageNet
# weights are fetched once on the head node.


localrules:
    fetch_weights,


rule fetch_weights:
    output:
        record="results/weights/{backbone}.json",
        weights=directory("results/weights/{backbone}"),
    log:
        "results/logs/weights/{backbone}.log",
    benchmark:
        "results/benchmarks/weights/{backbone}.tsv"
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=60,
    shell:
        "python -m agnet weights fetch {wildcards.backbone:q} --cache {output.weights:q}"
        " --record {output.record:q} > {log:q} 2>&1"


rule train:
    input:
        manifest="results/data/{ds}/manifest.parquet",
        settings=train_settings,
        weights=weights_input,
    output:
        model="results/runs/{ds}/{variant}/seed{seed}/model.pt",
        train_log="results/runs/{ds}/{variant}/seed{seed}/train_log.csv",
        record="results/runs/{ds}/{variant}/seed{seed}/run.json",
    log:
        "results/logs/{ds}/train/{variant}-seed{seed}.log",
    benchmark:
        "results/benchmarks/{ds}/train/{variant}-seed{seed}.tsv"
    wildcard_constraints:
        seed=r"\d+",
        variant=one_of(config["train_variants"]),  # the variants with a settings document
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=1,
    params:
        settings_sha256=settings_digest("train"),
        run_dir=lambda wc, output: str(Path(output.model).parent),
        weights_cache=weights_cache,
        operational=operational_flags("train"),
    shell:
        "python -m agnet train --settings {input.settings:q} --settings-sha256 {params.settings_sha256} --manifest {input.manifest:q}"
        " --seed {wildcards.seed} --out {params.run_dir:q} --weights-cache {params.weights_cache:q}"
        " {params.operational} --resume --no-progress > {log:q} 2>&1"
