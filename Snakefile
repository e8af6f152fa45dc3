# AGNet reproducibility suite: the whole paper as one DAG.
# Run `snakemake --cores 8 --use-conda` (paper protocol, real datasets) or
# `snakemake --cores 2 --configfile workflow/configs/demo.yaml` (synthetic twins).
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/settings.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
