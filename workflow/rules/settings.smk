# Settings documents: each stage's resolved settings (agnet.settings.plan), one JSON file per job family under
# results/settings/<stage>/<name>.json. The document's text is this rule's only parameter, so a setting that
# changes rewrites exactly the documents that hold it, and Snakemake reruns exactly the jobs that read them
# (and what depends on those). Operational settings are not in any document (README, "What reruns what").


localrules:
    settings,


rule settings:
    output:
        document="results/settings/{stage}/{name}.json",
    log:
        "results/logs/settings/{stage}/{name}.log",
    benchmark:
        "results/benchmarks/settings/{stage}/{name}.tsv"
    wildcard_constraints:
        stage="train|extract|evaluate|report",
    resources:
        mem_mb=100,
        runtime=1,
    params:
        document=settings_text,
    run:
        write_settings(output.document, params.document, log[0])
