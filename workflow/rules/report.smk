# Report stage: Tables I-IV (LaTeX + markdown), Table V (baselines: BoT beside AGNet, not in the paper),
# Figures 5-8 and training curves, the claims check.
# All light work on the head node; `snakemake --report report.html` collects the marked outputs.


localrules:
    tables,
    claims,
    figures_cmc,
    figures_illustrations,
    figures_training,
    sensitivity,


rule tables:
    input:
        summary="results/metrics/summary.csv",
        settings=settings_file("report", "tables"),
    output:
        tex=expand("results/tables/table{n}.tex", n=range(1, 6)),
        md=report(
            expand("results/tables/table{n}.md", n=range(1, 5)),
            caption="../report/table.rst",
            category="Tables",
        ),
        md5=report(
            "results/tables/table5.md",
            caption="../report/table5.rst",
            category="Tables",
        ),
    log:
        "results/logs/report/tables.log",
    benchmark:
        "results/benchmarks/report/tables.tsv"
    conda:
        "../../environment.yml"
    params:
        settings_sha256=settings_digest("report", "tables"),
    shell:
        "python -m agnet report tables --settings {input.settings:q} --settings-sha256 {params.settings_sha256} --summary {input.summary:q}"
        " --out results/tables > {log:q} 2>&1"


rule claims:
    input:
        runs="results/metrics/runs.csv",
        queries=metrics_targets("queries.parquet"),
        settings=settings_file("report", "claims"),
    output:
        md=report(
            "results/claims.md", caption="../report/claims.rst", category="Claims"
        ),
        json="results/claims.json",
    log:
        "results/logs/report/claims.log",
    benchmark:
        "results/benchmarks/report/claims.tsv"
    conda:
        "../../environment.yml"
    params:
        settings_sha256=settings_digest("report", "claims"),
    shell:
        "python -m agnet report claims --settings {input.settings:q} --settings-sha256 {params.settings_sha256} --runs {input.runs:q}"
        " --queries {input.queries:q} --markdown {output.md:q} --json {output.json:q} > {log:q} 2>&1"


rule figures_cmc:
    input:
        cmc="results/metrics/cmc.parquet",
        settings=settings_file("report", "figures_cmc"),
    output:
        png=report(
            figure_files("cmc", "png"),
            caption="../report/figure.rst",
            category="Figures",
        ),
        pdf=figure_files("cmc", "pdf"),
    log:
        "results/logs/report/figures_cmc.log",
    benchmark:
        "results/benchmarks/report/figures_cmc.tsv"
    conda:
        "../../environment.yml"
    params:
        settings_sha256=settings_digest("report", "figures_cmc"),
        out_dir=lambda wc, output: str(Path(output.png[0]).parent),
    shell:
        "python -m agnet report figures --settings {input.settings:q} --settings-sha256 {params.settings_sha256} --cmc {input.cmc:q}"
        " --out {params.out_dir:q} > {log:q} 2>&1"


rule figures_illustrations:
    input:
        **illustrated_inputs(),
        settings=settings_file("report", "figures_illustrations"),
    output:
        png=report(
            figure_files("illustrations", "png"),
            caption="../report/figure.rst",
            category="Figures",
        ),
        pdf=figure_files("illustrations", "pdf"),
    log:
        "results/logs/report/figures_illustrations.log",
    benchmark:
        "results/benchmarks/report/figures_illustrations.tsv"
    conda:
        "../../environment.yml"
    params:
        settings_sha256=settings_digest("report", "figures_illustrations"),
        inputs=illustrate_args,
        out_dir=lambda wc, output: str(Path(output.png[0]).parent),
    shell:
        "python -m agnet report figures --settings {input.settings:q} --settings-sha256 {params.settings_sha256} {params.inputs}"
        " --out {params.out_dir:q} > {log:q} 2>&1"


rule figures_training:
    input:
        logs=figure_train_logs(),
        settings=settings_file("report", "figures_training"),
    output:
        png=report(
            figure_files("training", "png"),
            caption="../report/figure.rst",
            category="Figures",
        ),
        pdf=figure_files("training", "pdf"),
    log:
        "results/logs/report/figures_training.log",
    benchmark:
        "results/benchmarks/report/figures_training.tsv"
    conda:
        "../../environment.yml"
    params:
        settings_sha256=settings_digest("report", "figures_training"),
        inputs=train_log_args,
        out_dir=lambda wc, output: str(Path(output.png[0]).parent),
    shell:
        "python -m agnet report figures --settings {input.settings:q} --settings-sha256 {params.settings_sha256} {params.inputs}"
        " --out {params.out_dir:q} > {log:q} 2>&1"


# Not in the paper: Eq. 5's alpha swept and cross-fitted over test vehicles (every evaluate job scores it), and the
# ALS constants' variants against AGNet-ASL (agnet.report.sensitivity).
rule sensitivity:
    input:
        metrics=sensitivity_metrics(),
        settings=settings_file("report", "sensitivity"),
    output:
        md=report(
            "results/tables/sensitivity.md",
            caption="../report/sensitivity.rst",
            category="Sensitivity",
        ),
        tex="results/tables/sensitivity.tex",
        png=report(
            "results/figures/alpha_sensitivity.png",
            caption="../report/sensitivity.rst",
            category="Sensitivity",
        ),
        pdf="results/figures/alpha_sensitivity.pdf",
    log:
        "results/logs/report/sensitivity.log",
    benchmark:
        "results/benchmarks/report/sensitivity.tsv"
    conda:
        "../../environment.yml"
    params:
        settings_sha256=settings_digest("report", "sensitivity"),
        tables=lambda wc, output: str(Path(output.md).parent),
        figures=lambda wc, output: str(Path(output.png).parent),
    shell:
        "python -m agnet report sensitivity --settings {input.settings:q} --settings-sha256 {params.settings_sha256}"
        " --metrics {input.metrics:q} --tables {params.tables:q} --figures {params.figures:q} > {log:q} 2>&1"
