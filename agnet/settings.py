"""Resolved settings: what each stage computes with, derived once from a merged configuration.

:func:`plan` is the one function that turns a configuration (the YAML files merged in order, plus Snakemake's
``--config`` overrides) into what the jobs read. The workflow (``workflow/rules/common.smk``) and ``agnet config
check`` both call it, so a configuration the check calls valid is one the workflow runs, and one it refuses is
refused before any job starts, with every cross-field rule (:func:`check_config`) applied.

A :class:`Plan` holds one **settings document** per stage and key — JSON-serialisable dicts:

=====================  ==========================================================================================
document               holds
=====================  ==========================================================================================
``train/<variant>``    every result-affecting training setting of the variant (``training`` + its overrides)
``extract/<dataset>``  the images the dataset's features cover (VehicleID: the evaluated test lists; else all)
``evaluate/<dataset>`` descriptors, protocols, distance, max_rank, and only where they apply: α (the All
                       descriptor), the VehicleID trials and their seed, the STR λ grid, camera rule and (a tuned
                       λ) cross-fitting folds and fold seed (veri-str, veri-st)
``report/<job>``       per dataset format: the dataset shown, whether it is a synthetic twin, its stand-in lists
                       (jobs: tables, claims, figures_cmc, figures_training; figures_illustrations also holds
                       the descriptor, distance and α its t-SNE and retrieval panels use)
=====================  ==========================================================================================

The workflow writes each document to ``results/settings/<stage>/<key>.json`` from a job whose only parameter is
the document's text, and the stage's jobs read that file (``agnet train/extract/evaluate/report --settings``).
So a setting reruns exactly the jobs whose document holds it, and what depends on them; a setting a stage does
not read (STR's λ grid for VehicleID; the trials for VeRi; α when All is not evaluated) is not in its document.

**Operational settings** (:data:`OPERATIONAL`) change how a job runs, not what it computes: they reach the jobs as
command-line flags (:meth:`Plan.flags`), are recorded in the outputs, and never trigger a rerun. The split is made
here and nowhere else; a checkpoint may also be resumed with different operational settings.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agnet.config import validate_config
from agnet.errors import AgnetError, ConfigError
from agnet.protocols import dataset_protocols, list_protocols, parse
from agnet.sensitivity import sweep_settings
from agnet.train.settings import TrainSettings, resolve_settings

# section -> operational key -> why it does not change a result
OPERATIONAL: dict[str, dict[str, str]] = {
    "training": {
        "workers": "data-loading processes: the batches are drawn from the seed, not from the workers",
        "log_every": "how often device-side sums are read for the progress bar and the finite-loss check",
        "decoded_cache": "whether images are decoded once into a cache or every epoch: the same pixels",
        "channels_last": "the memory layout of activations: the same arithmetic",
        "deterministic": "deterministic kernels: repeatability of the floating-point order, not the recipe",
        "compile": "torch.compile of the forward pass: the same graph",
    },
    "evaluation": {
        "batch_size": "images per extraction forward pass",
        "workers": "image-decoding processes of the extraction",
    },
}
# What a job runs with when it is given a settings document and no operational flag (config.yaml's values).
OPERATIONAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "training": {"workers": 4, "log_every": 20, "decoded_cache": "auto", "channels_last": "auto",
                 "deterministic": False, "compile": False},
    "evaluation": {"batch_size": 128, "workers": 4},
}
SCHEMA_VERSION = 1
REPORT_JOBS = ("tables", "claims", "figures_cmc", "figures_illustrations", "figures_training", "sensitivity")


def _finite(value: Any, where: str) -> list[str]:
    """Paths of non-finite numbers (NaN, ±inf) in a nested config value."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where}: {value} is not a finite number"]
    if isinstance(value, dict):
        return [line for key, item in value.items() for line in _finite(item, f"{where}.{key}" if where else key)]
    if isinstance(value, list):
        return [line for i, item in enumerate(value) for line in _finite(item, f"{where}[{i}]")]
    return []


def figure_run(config: dict[str, Any]) -> tuple[str, int]:
    """The (variant, seed) whose features the report illustrates (Fig. 7/8), from ``figures`` in the config:
    ``variant`` default AGNet-ASL if trained, else the last of ``train_variants``; ``seed`` default the first."""
    chosen = config.get("figures") or {}
    variants, seeds = config["train_variants"], config["seeds"]
    everywhere = [v for v in variants if all(v in trained_on(config, ds) for ds in config["run"])]
    variant = chosen.get("variant") or ("agnet_asl" if "agnet_asl" in everywhere else (everywhere or variants)[-1])
    seed = chosen.get("seed")
    seed = seeds[0] if seed is None else seed
    if variant not in variants:
        raise ConfigError(f"figures.variant: {variant!r} is not trained (train_variants: {', '.join(variants)})")
    missing = [ds for ds in config["run"] if variant not in trained_on(config, ds)]
    if missing:
        raise ConfigError(f"figures.variant: {variant!r} is not trained on {', '.join(missing)} (variant_datasets), "
                          "which the figures illustrate")
    if seed not in seeds:
        raise ConfigError(f"figures.seed: {seed} is not trained (seeds: {', '.join(map(str, seeds))})")
    return variant, seed


def _check_training(config: dict[str, Any]) -> list[str]:
    problems = []
    for variant, overrides in config["variants"].items():
        fixed = sorted(set(overrides) & set(OPERATIONAL["training"]))
        if fixed:
            problems.append(f"variants.{variant}: {', '.join(fixed)} is an operational setting (how a job runs, "
                            "not what it computes) and is set once, under training")
    defined = config["variants"]
    unknown = [name for name in config["train_variants"] if name not in defined]
    if unknown:
        problems.append(f"train_variants: {', '.join(map(repr, unknown))} not defined under 'variants' "
                        f"(defined: {', '.join(sorted(defined)) or 'none'})")
        return problems
    for variant, where_trained in (config.get("variant_datasets") or {}).items():
        if variant not in config["variants"]:  # a variant defined but not trained may keep its entry
            problems.append(f"variant_datasets.{variant}: not defined under 'variants' "
                            f"({', '.join(sorted(config['variants']))})")
        unknown_ds = [ds for ds in where_trained if ds not in config["datasets"]]
        if unknown_ds:
            problems.append(f"variant_datasets.{variant}: {', '.join(map(repr, unknown_ds))} not defined under "
                            f"'datasets' ({', '.join(config['datasets'])})")
    for variant in config["train_variants"]:
        try:
            settings = resolve_settings(config, variant)
        except ConfigError as error:
            problems.append(str(error))
            continue

        overrides = config["variants"].get(variant, {})

        def where(key: str, variant: str = variant, overrides: dict = overrides) -> str:
            """The key as written: the variant's override, else the shared training section."""
            return f"variants.{variant}.{key}" if key in overrides else f"training.{key}"

        if not any(settings.loss_weights.values()):
            problems.append(f"{where('loss_weights')}: all zero ({settings.loss_weights}): nothing would be learnt")
        if list(settings.lr_milestones) != sorted(set(settings.lr_milestones)):
            problems.append(f"{where('lr_milestones')}: {list(settings.lr_milestones)} must be strictly increasing")
        if settings.pretrained not in ("imagenet", "none") and not Path(settings.pretrained).is_file():
            problems.append(f"{where('pretrained')}: {settings.pretrained!r} is neither 'imagenet', 'none' nor an "
                            "existing state-dict file")
    return list(dict.fromkeys(problems))  # a problem of the shared section once, not once per variant


def _check_evaluation(config: dict[str, Any]) -> list[str]:
    evaluation, problems = config["evaluation"], []
    if evaluation["max_rank"] < 5:
        problems.append(f"evaluation.max_rank: {evaluation['max_rank']} is below 5, the largest rank the tables "
                        "report (Rank-5)")
    for name in config["run"]:
        entry = config["datasets"][name]
        try:
            dataset_protocols(name, entry, evaluation)
        except AgnetError as error:
            problems.append(str(error))
    return problems


def check_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``config`` in place (schema, defaults filled, finite numbers) and apply every cross-field rule;
    raise one :class:`ConfigError` listing every problem, each line naming the key. Returns the config."""
    validate_config(config, source=source)
    problems = _finite(config, "")
    problems += _check_training(config)
    problems += _check_evaluation(config)
    if not problems:
        try:
            figure_run(config)
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("\n".join(f"{source}: {line}" for line in problems))
    return config


# ------------------------------------------------------------------------------------------ documents


def _document(stage: str, key: str, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"stage": stage, "key": key, "schema": SCHEMA_VERSION, **extra, "settings": settings}


# Training settings that hold numbers (a YAML `1` and `1.0` are the same recipe: written as floats)
_FLOAT_KEYS = ("lr", "lr_gamma", "momentum", "weight_decay", "positive_fraction", "hard_negative_fraction")


def canonical_training(record: dict[str, Any]) -> dict[str, Any]:
    """A :meth:`TrainSettings.to_dict` record with what the variant does not read made explicit and numbers as
    floats: ``als`` is null unless the verification loss is ALS with a non-zero weight (with ``pairs`` written
    out), ``verification_loss`` null when the verification weight is 0, and ``hard_negative_fraction`` the fraction
    used (0 for a variant that may not read attributes). Two records that train the same model are equal; the
    training documents and the resume check (:func:`agnet.train.checkpoint.check_compatible`) both use it."""
    from agnet.train.settings import from_dict

    record = dict(record)
    defaults = {"max_steps": None, "compile": False}  # keys newer than some records
    resolved = from_dict({**defaults, **record})
    weights = {k: float(v) for k, v in record["loss_weights"].items()}
    record["loss_weights"] = weights
    for key in _FLOAT_KEYS:
        record[key] = None if record[key] is None else float(record[key])
    if not (resolved.verification_loss == "als" and weights["verify"] > 0):
        record["als"] = None
    else:  # the default written out: `pairs: attributes` given or not is the same recipe
        record["als"] = {"pairs": "attributes", **{k: (float(v) if k != "pairs" else v)
                                                   for k, v in record["als"].items()}}
    if weights["verify"] == 0:
        record["verification_loss"] = None
    record["hard_negative_fraction"] = float(resolved.effective_hard_negative_fraction)
    return _canonical_tricks(record, resolved)


# BoT's settings (issue 25) at their "off" value: left out of a canonical record, so a recipe that does not use
# them has the document it had before they existed (no result is marked stale by their arrival).
_TRICKS_OFF = {"architecture": "agnet", "last_stride": 2, "bnneck": False, "id_label_smoothing": 0.0,
               "triplet": None, "warmup_epochs": 0, "warmup_factor": 0.1, "random_erasing": 0.0, "sampler": "pairs",
               "instances_per_identity": 4, "optimizer": "sgd"}


def _canonical_tricks(record: dict[str, Any], resolved: TrainSettings) -> dict[str, Any]:
    """The BoT part of :func:`canonical_training`: settings that are not read made explicit (the triplet margin
    without the triplet, the warm-up factor without warm-up, K without the pk sampler, the momentum of Adam, the
    pair settings of a pk batch without a verification term), numbers as floats, and every setting at its "off"
    value left out."""
    record["id_label_smoothing"] = float(record.get("id_label_smoothing", 0.0))
    record["random_erasing"] = float(record.get("random_erasing", 0.0))
    record["warmup_factor"] = float(record.get("warmup_factor", 0.1))
    record["triplet"] = ({k: float(v) for k, v in resolved.triplet.items()} if resolved.uses_triplet else None)
    if not resolved.warmup_epochs:
        record["warmup_factor"] = 0.1
    if resolved.sampler == "pk":
        record["positive_fraction"] = None  # a P x K batch pairs every image with one positive and one negative
        if record["verification_loss"] is None:
            record["hard_negative_fraction"] = 0.0  # its pairs are not read
    else:
        record["instances_per_identity"] = 4
    if resolved.optimizer == "adam":
        record["momentum"] = None
    if resolved.architecture == "bot":
        record["embedding_dim"] = None  # no Linear embedding: the descriptor has the trunk's C channels
    for key, off in _TRICKS_OFF.items():
        if key in record and record[key] == off and type(record[key]) is type(off):
            del record[key]
    return record


def variant_descriptors(config: dict[str, Any], variant: str) -> list[str]:
    """The evaluation's descriptors (``evaluation.descriptors``, in order) that ``variant``'s model provides: all of
    them for AGNet; ``ID`` alone for ``architecture: bot`` (no attribute branch: no Attr, so no All). The
    ``descriptors`` argument of :func:`evaluation_settings` for that variant's runs."""
    from agnet.model import ARCHITECTURE_DESCRIPTORS

    provided = ARCHITECTURE_DESCRIPTORS[resolve_settings(config, variant).architecture]
    return [name for name in config["evaluation"]["descriptors"] if name in provided]


def training_document(config: dict[str, Any], variant: str) -> dict[str, Any]:
    """``train/<variant>``: the result-affecting fields of the variant's :class:`TrainSettings`, canonical
    (:func:`canonical_training`): the ALS constants retrain only the ALS variants, the negative mining only the
    variants that read attributes, and ``1`` vs ``1.0`` nothing."""
    record = canonical_training(resolve_settings(config, variant).to_dict())
    settings = {k: v for k, v in record.items() if k not in OPERATIONAL["training"] and k != "variant"}
    return _document("train", variant, settings, variant=variant)


def extraction_settings(protocols: list[str] | None) -> dict[str, Any]:
    """What a features file covers: ``images`` = the VehicleID list protocols among ``protocols``, or ``"all"``."""
    return {"images": list_protocols(protocols) or "all"}


def extraction_document(config: dict[str, Any], dataset: str) -> dict[str, Any]:
    """``extract/<dataset>``: which images the dataset's features cover."""
    entry = config["datasets"][dataset]
    protocols = dataset_protocols(dataset, entry, config["evaluation"])
    return _document("extract", dataset, extraction_settings(protocols), dataset=dataset, format=entry["format"])


def evaluation_settings(evaluation: dict[str, Any], protocols: list[str],
                        descriptors: list[str] | None = None) -> dict[str, Any]:
    """What evaluating ``protocols`` reads of the config's ``evaluation`` section, and nothing else."""
    parsed = [parse(name) for name in protocols]
    descriptors = list(descriptors or evaluation["descriptors"])
    settings: dict[str, Any] = {"descriptors": descriptors, "protocols": list(protocols),
                                "distance": evaluation["distance"], "max_rank": evaluation["max_rank"]}
    if "All" in descriptors:
        settings["alpha"] = float(evaluation["alpha"])
        sweep = sweep_settings(evaluation, list(protocols))  # α sensitivity of All (agnet.sensitivity)
        if sweep is not None:
            settings["alpha_sweep"] = sweep
    if any(p.test_size is not None for p in parsed):
        settings["vehicleid"] = {"trials": evaluation["vehicleid_trials"], "trial_seed": evaluation["trial_seed"]}
    if any(p.reranked for p in parsed):  # veri-str and its control veri-st
        lambdas = sorted({float(v) for v in evaluation["str"]["lambdas"]})
        settings["str"] = {"lambdas": lambdas, "same_camera": evaluation["str"]["same_camera"]}
        if len(lambdas) > 1:  # λ is cross-fitted over folds of the test vehicles (a single λ is used as given)
            settings["str"].update(folds=int(evaluation["str"]["folds"]), fold_seed=int(evaluation["str"]["fold_seed"]))
    return settings


def evaluation_key(config: dict[str, Any], dataset: str, variant: str) -> str:
    """Name of the evaluate document that scores ``variant``'s runs on ``dataset``: ``<dataset>`` where the variant's
    model provides every configured descriptor (the AGNet variants), else ``<dataset>.<descriptors>`` (e.g.
    ``vehicleid.ID`` for ``bot``, which has no attribute branch). Adding such a variant leaves the others' document,
    and so their evaluations, untouched."""
    provided = variant_descriptors(config, variant)
    if provided == list(config["evaluation"]["descriptors"]):
        return dataset
    if not provided:
        raise ConfigError(f"variants.{variant}: its model provides none of evaluation.descriptors "
                          f"({', '.join(config['evaluation']['descriptors'])}); add ID to evaluate it")
    return f"{dataset}.{'+'.join(provided)}"


def evaluation_document(config: dict[str, Any], dataset: str, descriptors: list[str] | None = None
                        ) -> dict[str, Any]:
    """``evaluate/<dataset>``: :func:`evaluation_settings` of the dataset's protocols, for the configured descriptors
    or ``descriptors`` (a variant's own, :func:`evaluation_key`)."""
    entry = config["datasets"][dataset]
    protocols = dataset_protocols(dataset, entry, config["evaluation"])
    key = dataset if descriptors is None else f"{dataset}.{'+'.join(descriptors)}"
    return _document("evaluate", key, evaluation_settings(config["evaluation"], protocols, descriptors),
                     dataset=dataset, format=entry["format"])


def report_datasets(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Format (veri/vehicleid) -> the dataset the tables, claims and figures show (the first of that format in
    ``run``): its name, whether it is a synthetic twin, (a VehicleID twin) the lists standing for the paper's, and
    ``holdout_vehicles`` only where the dataset holds training vehicles out of training (the captions state it)."""
    from agnet.data.constants import synthetic_stand_ins

    shown: dict[str, dict[str, Any]] = {}
    for name in config["run"]:
        entry = config["datasets"][name]
        synthetic = entry["source"]["kind"] == "synthetic"
        stand_ins = synthetic_stand_ins(entry["source"]) if synthetic and entry["format"] == "vehicleid" else None
        shown.setdefault(entry["format"], {"dataset": name, "synthetic": synthetic,
                                           "stand_ins": {str(k): v for k, v in (stand_ins or {}).items()} or None})
        if entry.get("holdout_vehicles") and shown[entry["format"]]["dataset"] == name:  # the tables' captions say so
            shown[entry["format"]]["holdout_vehicles"] = int(entry["holdout_vehicles"])
    return shown


def report_document(config: dict[str, Any], job: str) -> dict[str, Any]:
    """``report/<job>`` (:data:`REPORT_JOBS`): the datasets shown; the illustrations also the descriptor,
    distance and α their retrieval and t-SNE panels use (those of the evaluation)."""
    if job not in REPORT_JOBS:
        raise AgnetError(f"unknown report job {job!r} ({', '.join(REPORT_JOBS)})")
    shown = report_datasets(config)
    if job.startswith("figures_") or job == "sensitivity":  # the dataset and whether it is a twin, not stand-ins
        shown = {fmt: {k: v for k, v in entry.items() if k != "stand_ins"} for fmt, entry in shown.items()}
    if job == "figures_training":  # the training curves show the VeRi dataset's runs only
        shown = {fmt: entry for fmt, entry in shown.items() if fmt == "veri"}
    settings: dict[str, Any] = {"datasets": shown}
    if job == "figures_illustrations":
        evaluation = config["evaluation"]
        settings["illustration"] = {"descriptor": "All", "distance": evaluation["distance"],
                                    "alpha": float(evaluation["alpha"])}
    if job == "sensitivity":  # α's sweep and the ALS-constant variants (agnet.sensitivity.report_settings)
        from agnet.sensitivity import report_settings

        settings.update(report_settings(config))
    return _document("report", job, settings)


def _flags(values: dict[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


@dataclass
class Plan:
    """Every settings document of a checked configuration (key ``<stage>/<name>``) and its operational flags."""

    config: dict[str, Any]
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    figure_run: tuple[str, int] = ("", 0)

    def document(self, key: str) -> dict[str, Any]:
        try:
            return self.documents[key]
        except KeyError:
            raise AgnetError(f"no settings document {key!r} in this plan (have: {', '.join(self.documents)})") from None

    def text(self, key: str) -> str:
        """The document as the workflow writes it (sorted keys: equal settings give equal text)."""
        return document_text(self.document(key))

    def digest(self, key: str) -> str:
        """SHA-256 of :meth:`text`: a parameter of every job reading the document, so a changed setting reruns
        those jobs even when the document file itself was deleted (its job then runs again first)."""
        return hashlib.sha256(self.text(key).encode()).hexdigest()

    def operational(self, section: str) -> dict[str, Any]:
        """The operational settings of ``training`` or ``evaluation``, as configured."""
        configured = self.config[section]
        return {key: configured.get(key, OPERATIONAL_DEFAULTS[section][key]) for key in OPERATIONAL[section]}

    def flags(self, stage: str) -> str:
        """Command-line flags carrying the operational settings to a ``train`` or ``extract`` job."""
        if stage == "train":
            values = self.operational("training")
            values["decoded_cache"] = str(values["decoded_cache"]).lower()
            return _flags(values)
        if stage == "extract":
            return _flags(self.operational("evaluation"))
        raise AgnetError(f"stage {stage!r} has no operational flags")


def document_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def load_plan(*paths: str | Path) -> Plan:
    """:func:`plan` of config files merged in order (as Snakemake's ``--configfile``); errors name the files."""
    from agnet.config import load_config

    return plan(load_config(*paths), source=" + ".join(map(str, paths)))


def plan(config: dict[str, Any], source: str = "config") -> Plan:
    """Check ``config`` (:func:`check_config`) and resolve every stage's settings document."""
    check_config(config, source)
    result = Plan(config=config, figure_run=figure_run(config))
    for variant in config["train_variants"]:
        result.documents[f"train/{variant}"] = training_document(config, variant)
    for name in config["run"]:
        result.documents[f"extract/{name}"] = extraction_document(config, name)
        result.documents[f"evaluate/{name}"] = evaluation_document(config, name)
        for variant in trained_on(config, name):  # a variant whose model lacks a configured descriptor (bot)
            key = evaluation_key(config, name, variant)
            if key != name and f"evaluate/{key}" not in result.documents:
                result.documents[f"evaluate/{key}"] = evaluation_document(config, name,
                                                                          variant_descriptors(config, variant))
    for job in REPORT_JOBS:
        result.documents[f"report/{job}"] = report_document(config, job)
    return result


# ------------------------------------------------------------------------------------------ reading


def read_document(path: str | Path, stage: str) -> dict[str, Any]:
    """A settings document written by the workflow (or by hand) for ``stage``; checked for its kind."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AgnetError(f"{path}: unreadable settings document ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("settings"), dict):
        raise AgnetError(f"{path}: not a settings document (no 'settings' mapping)")
    if document.get("stage") != stage:
        raise AgnetError(f"{path}: a settings document for stage {document.get('stage')!r}, not {stage!r}")
    if document.get("schema") != SCHEMA_VERSION:
        raise AgnetError(f"{path}: settings document schema {document.get('schema')!r}, expected {SCHEMA_VERSION} "
                         "(written by another agnet version; rerun the workflow)")
    top, inner = _REQUIRED[stage]
    missing = [k for k in top if k not in document] + [f"settings.{k}" for k in inner if k not in document["settings"]]
    if missing:
        raise AgnetError(f"{path}: the {stage} settings document lacks {', '.join(missing)} (`agnet config settings` "
                         "writes a complete one)")
    return document


def _train_keys() -> tuple[str, ...]:
    from dataclasses import MISSING, fields

    return tuple(f.name for f in fields(TrainSettings) if f.name not in OPERATIONAL["training"]
                 and f.name != "variant" and f.default is MISSING)  # fields with defaults may be absent


# stage -> (top-level keys, keys of `settings`) a document of that stage must hold
_REQUIRED = {
    "train": (("variant",), _train_keys()),
    "extract": (("dataset",), ("images",)),
    "evaluate": (("dataset",), ("descriptors", "protocols", "distance", "max_rank")),
    "report": (("key",), ("datasets",)),
}


def train_settings(document: dict[str, Any], operational: dict[str, Any]) -> TrainSettings:
    """The :class:`TrainSettings` of a ``train`` document with the operational settings of the job."""
    from agnet.train.settings import from_dict

    missing = sorted(set(OPERATIONAL["training"]) - set(operational))
    if missing:
        raise AgnetError(f"operational training settings missing: {', '.join(missing)}")
    return from_dict({**document["settings"], **operational, "variant": document["variant"]})


def trained_on(config: dict[str, Any], dataset: str) -> list[str]:
    """The variants trained on ``dataset``: ``train_variants``, less those ``variant_datasets`` keeps elsewhere."""
    only = config.get("variant_datasets") or {}
    return [v for v in config["train_variants"] if v not in only or dataset in only[v]]
