# Report stage: Tables I-IV (LaTeX + markdown), Figures 5-8 and training curves, the claims check.
# All light work on the head node; `snakemake --report report.html` collects the marked outputs.


localrules:
    tables,
    claims,
    figures,


rule tables:
    input:
        summary="results/metrics/summary.csv",
    output:
        tex=expand("results/tables/table{n}.tex", n=range(1, 5)),
        md=report(
            expand("results/tables/table{n}.md", n=range(1, 5)),
            caption="../report/table.rst",
            category="Tables",
        ),
    log:
        "results/logs/report/tables.log",
    conda:
        "../../environment.yml"
    params:
        configs=config_args,
    shell:
        "python -m agnet report tables {params.configs} --summary {input.summary}"
        " --out results/tables > {log} 2>&1"


rule claims:
    input:
        runs="results/metrics/runs.csv",
    output:
        md=report(
            "results/claims.md", caption="../report/claims.rst", category="Claims"
        ),
        json="results/claims.json",
    log:
        "results/logs/report/claims.log",
    conda:
        "../../environment.yml"
    params:
        configs=config_args,
    shell:
        "python -m agnet report claims {params.configs} --runs {input.runs}"
        " --markdown {output.md} --json {output.json} > {log} 2>&1"


rule figures:
    input:
        **figure_inputs(),
    output:
        png=report(
            expand("results/figures/{figure}.png", figure=FIGURES),
            caption="../report/figure.rst",
            category="Figures",
        ),
        pdf=expand("results/figures/{figure}.pdf", figure=FIGURES),
    log:
        "results/logs/report/figures.log",
    conda:
        "../../environment.yml"
    params:
        configs=config_args,
        inputs=figure_args,
        out_dir=lambda wc, output: str(Path(output.png[0]).parent),
    shell:
        "python -m agnet report figures {params.configs} --cmc {input.cmc:q} {params.inputs}"
        " --out {params.out_dir:q} > {log:q} 2>&1"
