# Shared helpers: config validation, dataset lookups and the target list.
import os
import re
import shlex
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))

from agnet.config import validate_config  # noqa: E402  (needs the checkout on sys.path)
from agnet.data.constants import release_twin_test_size, twin_test_sizes  # noqa: E402
from agnet.errors import ConfigError  # noqa: E402
from agnet.train.settings import resolve_settings  # noqa: E402
from snakemake.exceptions import WorkflowError  # noqa: E402

try:
    validate_config(config, source="config")  # the same checks as `agnet config check`
except ConfigError as error:
    raise WorkflowError(f"invalid configuration:\n{error}") from None

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

# Config files in merge order (the workflow's own first); `agnet train` merges them the same way.
CONFIG_FILES = [str(Path(workflow.basedir, "config.yaml").resolve())] + [
    str(Path(p).resolve()) for p in workflow.overwrite_configfiles
]
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


def variant_settings(wildcards):
    """Resolved training settings of the {variant} wildcard (a change re-triggers training)."""
    return resolve_settings(config, wildcards.variant).to_dict()


def weights_input(wildcards):
    """The ImageNet weights record a run needs, if its variant starts from ImageNet."""
    settings = resolve_settings(config, wildcards.variant)
    if settings.pretrained != "imagenet":
        return []
    return f"results/weights/{settings.backbone}.json"


def config_args(wildcards):
    """`--config` flags reproducing this workflow's merged configuration."""
    return " ".join(f"--config {shlex.quote(path)}" for path in CONFIG_FILES)


def protocols(ds):
    """Evaluation protocols of a dataset: VeRi (+ STR) or one per VehicleID test list."""
    entry = config["datasets"][ds]
    evaluation = config["evaluation"]
    if entry["format"] == "veri":
        return ["veri"] + (["veri-str"] if evaluation["str"]["enabled"] else [])
    if "release_scale" in entry["source"]:
        # the twin's lists standing for the configured release lists
        scale = entry["source"]["release_scale"]
        sizes = [
            release_twin_test_size(size, scale)
            for size in evaluation["vehicleid_test_sizes"]
        ]
    elif entry["source"]["kind"] == "synthetic":
        sizes = twin_test_sizes(entry["source"]["vehicles"])
    else:
        sizes = evaluation["vehicleid_test_sizes"]
    return [f"vehicleid-{size}" for size in sizes]


def metrics_targets():
    """Every metrics file: dataset x variant x seed x descriptor x protocol."""
    return [
        f"results/runs/{ds}/{variant}/seed{seed}/metrics/{descriptor}/{protocol}.json"
        for ds in config["run"]
        for variant in config["train_variants"]
        for seed in config["seeds"]
        for descriptor in config["evaluation"]["descriptors"]
        for protocol in protocols(ds)
    ]


# Figures of the report stage (file stems under results/figures/).
FIGURES = [
    "fig5_cmc_veri",
    "fig6_cmc_vehicleid",
    "fig7_tsne",
    "fig8_retrieval_veri",
    "fig8_retrieval_vehicleid",
    "training_curves",
]


def figure_run(ds):
    """The run whose features illustrate a dataset (t-SNE, retrieval): AGNet-ASL, first seed."""
    return f"results/runs/{ds}/agnet_asl/seed{config['seeds'][0]}"


def first_of(fmt):
    """The first dataset of a format in `run` (None if there is none)."""
    return next(
        (n for n in config["run"] if config["datasets"][n]["format"] == fmt), None
    )


# Tables I-IV and the figures put VeRi-776 and VehicleID side by side: they are made when `run`
# holds a dataset of each format (a run of one dataset ends at its metrics).
REPORT = all(first_of(fmt) for fmt in ("veri", "vehicleid"))


def figure_features():
    """Features illustrated by Fig. 7/8 (AGNet-ASL, first seed) of each format."""
    if not REPORT:
        return []
    return [f"{figure_run(first_of(fmt))}/features.pt" for fmt in ("veri", "vehicleid")]


def figure_train_logs():
    return [
        f"results/runs/{ds}/{variant}/seed{seed}/train_log.csv"
        for ds in config["run"]
        for variant in config["train_variants"]
        for seed in config["seeds"]
    ]


def all_targets():
    """Final outputs of the workflow for every dataset in `run`."""
    return (
        expand(
            ["results/data/{ds}/verify.json", "results/data/{ds}/manifest.parquet"],
            ds=config["run"],
        )
        + ["results/metrics/summary.csv"]
        + (
            [
                "results/claims.md",
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
