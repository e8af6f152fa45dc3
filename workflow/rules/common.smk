# Shared helpers: the plan (config checked, every stage's settings resolved), dataset lookups, the target list.
import os
import re
import shlex
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))

# The agnet imports need the checkout on sys.path (above).
from agnet.errors import ConfigError  # noqa: E402
from agnet.fileio import write_text  # noqa: E402
from agnet.settings import (
    evaluation_key,
    plan as resolve_plan,
    trained_on,
)  # noqa: E402
from snakemake.exceptions import WorkflowError  # noqa: E402

# The merged configuration (config files and --config overrides) checked and resolved once, by the function
# `agnet config check` runs: every stage's settings document (results/settings/, rule `settings`) and the
# operational flags. Jobs read their document, never the YAML files.
try:
    PLAN = resolve_plan(config, source="config")
except ConfigError as error:
    raise WorkflowError(f"invalid configuration:\n{error}") from None
FIGURE_VARIANT, FIGURE_SEED = PLAN.figure_run

# Rules call the package's CLI (`python -m agnet`). Jobs inherit this environment: PYTHONPATH makes
# the checkout importable inside --use-conda environments and on cluster nodes, and PATH starts with
# the interpreter running Snakemake (a virtualenv's `bin/`), which --use-conda activation precedes.
_search_path = [str(Path(workflow.basedir).resolve()), os.environ.get("PYTHONPATH", "")]
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in _search_path if p),
    PATH=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    ),
)
# On a cluster, SIGUSR1 is the walltime warning (`--signal=USR1@300` in the SLURM profile) and SLURM
# sends it to every process of the job step: this Snakemake and the rule's shell would die of it (the
# default action) and the step would end while training is still writing its checkpoint. Ignoring it
# here is inherited by the shell; `agnet train` installs its own handler, checkpoints and exits.
signal.signal(signal.SIGUSR1, signal.SIG_IGN)

DATASETS = {name: config["datasets"][name] for name in config["run"]}
SYNTHETIC = [n for n, d in DATASETS.items() if d["source"]["kind"] == "synthetic"]
EXTERNAL = [n for n, d in DATASETS.items() if d["source"]["kind"] != "synthetic"]


def one_of(names):
    """Wildcard regex matching exactly the given names (nothing if the list is empty)."""
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


def dataset(wildcards):
    """Config entry of the dataset named by the {ds} wildcard."""
    return DATASETS[wildcards.ds]


def fetch_args(wildcards):
    """`agnet data fetch` source flags for an external dataset (shell-quoted: paths may hold ' or spaces)."""
    source = dataset(wildcards)["source"]
    args = f"--{source['kind']} {shlex.quote(source['location'])}"
    if source.get("sha256"):
        args += f" --sha256 {shlex.quote(source['sha256'])}"
    return args


def synth_size_args(wildcards):
    """`agnet data synth` size flags: release-size (`release_scale`) or vehicles and cameras."""
    entry = dataset(wildcards)
    source = entry["source"]
    if "release_scale" not in source:
        return f"--vehicles {source['vehicles']} --cameras {source['cameras']}"
    args = f"--release-scale {source['release_scale']}"
    # VeRi's 20 cameras are the release's; VehicleID's viewpoint cameras may be chosen
    if entry["format"] == "vehicleid" and "cameras" in source:
        args += f" --cameras {source['cameras']}"
    return args


def settings_file(stage, name):
    """The settings document of a stage's job (written by rule `settings`), e.g. train/agnet_asl."""
    return f"results/settings/{stage}/{name}.json"


def settings_text(wildcards):
    """The document of results/settings/{stage}/{name}.json, as text: the `settings` rule's only parameter."""
    return PLAN.text(f"{wildcards.stage}/{wildcards.name}")


def write_settings(path, text, log):
    """Rule `settings`: write one document atomically (in the Snakemake process: no job start-up) and log it."""
    write_text(path, text)
    write_text(log, f"wrote {path} ({len(text)} bytes)\n")


def operational_flags(stage):
    """Params function: the command-line flags saying how a train or extract job runs (workers, log_every, ...:
    agnet.settings.OPERATIONAL) and its threads. A params function of `threads` counts as derived from the job's
    resources, and Snakemake leaves derived params out of its rerun trigger: changing one of these reruns nothing
    (tests/test_rerun.py checks it), while every result-affecting setting is in a settings document.
    """
    flags = PLAN.flags(stage)
    return lambda wildcards, threads: f"{flags} --threads {threads}"


def settings_digest(stage, name=None):
    """Params function: the SHA-256 of a job's settings document (key stage/name, or the wildcards' document:
    job_settings_key), so the job reruns whenever its settings change, document file or not.
    """

    def digest(wildcards):
        return PLAN.digest(f"{stage}/{name or job_settings_key(stage, wildcards)}")

    return digest


def train_settings(wildcards):
    return settings_file("train", wildcards.variant)


def job_settings_key(stage, wildcards):
    """The document a job of `stage` reads: train/{variant}; extract/{ds}; evaluate/{ds}, or for a variant whose
    model lacks a configured descriptor (bot: no Attr, no All) evaluate/{ds}.<its descriptors>.
    """
    if stage == "train":
        return wildcards.variant
    if stage == "evaluate":
        return evaluation_key(PLAN.config, wildcards.ds, wildcards.variant)
    return wildcards.ds


def dataset_settings(stage):
    """Input function: the settings document of a job of `stage` (extract or evaluate)."""
    return lambda wildcards: settings_file(stage, job_settings_key(stage, wildcards))


def weights_input(wildcards):
    """The initial weights a run reads: ImageNet's (record and folder), or the state-dict file `pretrained` names
    (an input, so a rewritten file retrains); none from random initialisation."""
    settings = PLAN.document(f"train/{wildcards.variant}")["settings"]
    if settings["pretrained"] == "none":
        return []
    if settings["pretrained"] != "imagenet":
        return [settings["pretrained"]]
    return [
        f"results/weights/{settings['backbone']}.json",
        f"results/weights/{settings['backbone']}",
    ]


def weights_cache(wildcards):
    """Folder `agnet train` reads the ImageNet weights of the run's backbone from."""
    backbone = PLAN.document(f"train/{wildcards.variant}")["settings"]["backbone"]
    return f"results/weights/{backbone}"


def runs():
    """(dataset, variant, seed) of every trained run (`variant_datasets` keeps a variant to some datasets)."""
    return [
        (ds, variant, seed)
        for ds in config["run"]
        for variant in trained_on(config, ds)
        for seed in config["seeds"]
    ]


def metrics_targets(name="metrics.json"):
    """One metrics file per trained run (all its descriptors x protocols), or its per-query file."""
    return [
        f"results/runs/{ds}/{variant}/seed{seed}/{name}" for ds, variant, seed in runs()
    ]


# Everything `agnet aggregate` writes (all declared, so a deleted one is rebuilt).
AGGREGATE_OUTPUTS = [
    f"results/metrics/{name}"
    for name in (
        "runs.csv",
        "runs.parquet",
        "summary.csv",
        "summary.parquet",
        "cmc.parquet",
    )
]

# Figures of the report stage (file stems under results/figures/), by the inputs each family is made
# from: one job per family, each started as soon as its own inputs exist.
FIGURE_FAMILIES = {
    # the CMC table (after every evaluation)
    "cmc": ["fig5_cmc_veri", "fig6_cmc_vehicleid"],
    # the illustrated runs (config `figures`)
    "illustrations": ["fig7_tsne", "fig8_retrieval_veri", "fig8_retrieval_vehicleid"],
    # the VeRi dataset's training logs
    "training": ["training_curves"],
}
FIGURES = [stem for stems in FIGURE_FAMILIES.values() for stem in stems]

# Tables I-IV and the figures put VeRi-776 and VehicleID side by side: they are made when `run`
# holds a dataset of each format (a run of one dataset ends at its metrics).
FIRST = {
    fmt: next(
        (n for n in config["run"] if config["datasets"][n]["format"] == fmt), None
    )
    for fmt in ("veri", "vehicleid")
}
REPORT = all(FIRST.values())
# The run illustrated by Fig. 7/8 (the config's `figures` choice, resolved once by agnet.config).
FIGURE_RUNS = {
    ds: f"results/runs/{ds}/{FIGURE_VARIANT}/seed{FIGURE_SEED}"
    for ds in FIRST.values()
    if ds
}


def sensitivity_metrics():
    """The metrics files of the datasets the report shows (the sensitivity report's alpha sweeps and All rows)."""
    shown = tuple(f"results/runs/{ds}/" for ds in FIRST.values() if ds)
    return [m for m in metrics_targets() if REPORT and m.startswith(shown)]


def figure_files(family, ext):
    """The files of one figure family, e.g. `figure_files("cmc", "png")`."""
    return expand(
        "results/figures/{figure}.{ext}", figure=FIGURE_FAMILIES[family], ext=ext
    )


def illustrated_inputs():
    """Features and manifest of the run Fig. 7/8 show, per dataset format (none without a report)."""
    if not REPORT:
        return {}
    return {
        "features": [f"{FIGURE_RUNS[ds]}/features.pt" for ds in FIRST.values()],
        "manifests": [f"results/data/{ds}/manifest.parquet" for ds in FIRST.values()],
    }


def figure_train_logs():
    """The VeRi dataset's training logs (the training-curves figure), every variant and seed."""
    if not REPORT:
        return []
    return [
        f"results/runs/{FIRST['veri']}/{variant}/seed{seed}/train_log.csv"
        for variant in trained_on(config, FIRST["veri"])
        for seed in config["seeds"]
    ]


def illustrate_args(wildcards, input):
    """The illustrated runs as `agnet report figures` flags (nothing is found by the package itself)."""
    return " ".join(
        f"--illustrate {shlex.quote(ds)} {shlex.quote(features)} {shlex.quote(manifest)}"
        for ds, features, manifest in zip(
            FIRST.values(), input.features, input.manifests
        )
    )


def train_log_args(wildcards, input):
    """The training logs as `agnet report figures` flags, each with its variant."""
    variants = [v for v in trained_on(config, FIRST["veri"]) for _ in config["seeds"]]
    return " ".join(
        f"--train-log {shlex.quote(variant)} {shlex.quote(log)}"
        for variant, log in zip(variants, input.logs)
    )


def all_targets():
    """Every file the workflow keeps, for every dataset in `run`: each is a target, so a deleted one (and
    only what depends on it) is rebuilt by the next run."""
    return (
        expand(
            [
                "results/data/{ds}/dataset.json",
                "results/data/{ds}/verify.json",
                "results/data/{ds}/manifest.parquet",
            ],
            ds=config["run"],
        )
        + [f"results/data/{ds}/root" for ds in SYNTHETIC]
        + [
            f"results/runs/{ds}/{variant}/seed{seed}/{name}"
            for ds, variant, seed in runs()
            for name in ("model.pt", "train_log.csv", "run.json", "features.pt")
        ]
        + metrics_targets()
        + AGGREGATE_OUTPUTS
        + (
            [
                "results/claims.md",
                *expand("results/tables/sensitivity.{ext}", ext=("tex", "md")),
                *expand("results/figures/alpha_sensitivity.{ext}", ext=("png", "pdf")),
                *expand(
                    "results/tables/table{n}.{ext}", n=range(1, 5), ext=("tex", "md")
                ),
                *expand(
                    "results/figures/{figure}.{ext}", figure=FIGURES, ext=("png", "pdf")
                ),
            ]
            if REPORT
            else []
        )
    )
