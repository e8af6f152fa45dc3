"""The ``agnet`` command-line program: every workflow step, runnable without Snakemake.

    agnet data synth {veri,vehicleid} OUT_DIR [--vehicles N] [--cameras C] [--seed S] [--release | --release-scale F]
    agnet data fetch {veri,vehicleid} (--url URL | --archive FILE | --directory DIR) --dest DIR -o dataset.json
    agnet data verify {veri,vehicleid} ROOT [--strict] [-o REPORT.json]     (exit 0 = valid, 1 = invalid)
    agnet data manifest {veri,vehicleid} ROOT -o MANIFEST.parquet [--train-vehicles {attribute-labelled,all}] [--holdout-vehicles N]
    agnet data grid {veri,vehicleid} ROOT -o GRID.png
    agnet train (--settings DOC | --config CONFIG [--config MORE] --variant VARIANT) --manifest MANIFEST.parquet
                --seed S --out RUN_DIR [--resume] [operational flags: --workers, --log-every, ...]
    agnet extract (--settings DOC | --config CONFIG [--dataset NAME] [--protocol P ...]) --model RUN_DIR/model.pt
                  --manifest MANIFEST.parquet --out FEATURES.pt [--batch-size N] [--workers N]
    agnet evaluate (--settings DOC | --config CONFIG [--descriptor D ...] [--protocol P ...]) --features FEATURES.pt
                   --manifest MANIFEST.parquet [--model MODEL.pt] -o METRICS.json
    agnet aggregate METRICS.json ... --out DIR
    agnet report {tables,claims,figures,sensitivity} (--settings DOC | --config CONFIG) ...
    agnet weights fetch BACKBONE --cache DIR
    agnet config check CONFIG.yaml [MORE.yaml ...]
    agnet config settings CONFIG.yaml [MORE.yaml ...] [--key STAGE/NAME] [-o FILE]

A settings document (``--settings``) is what the workflow writes under ``results/settings/``: the resolved
settings of one stage (:mod:`agnet.settings`); ``--config`` resolves the same document from config files.

ROOT is a dataset directory or the ``dataset.json`` written by ``agnet data fetch``. User errors
(bad input, missing data, a full disk, a missing or unreadable file) print one ``agnet: error: ...``
line and exit with status 1; a bad flag prints one ``agnet CMD: error: ...`` line and exits with 2.
``AGNET_DEBUG=1`` shows the traceback of a converted error instead.
Progress and status messages go through :mod:`logging` to stderr, configured once here
(``--log-level``, ``-v``).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agnet import __version__
from agnet.errors import AgnetError

FORMATS = ("veri", "vehicleid")
MAX_ERROR_LINES = 8  # a longer message (e.g. a list of mismatched weights) is cut, saying how much was left out


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``agnet train: error: argument --seed: ... (see agnet train --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


_seed = _int_at_least(0)
_positive = _int_at_least(1)


def _output_file(text: str) -> Path:
    """An argparse type: a file to write (not an existing directory)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; expected the path of a file to write")
    return path


def _output_dir(text: str) -> Path:
    """An argparse type: a directory to write into (not an existing file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; expected a directory")
    return path


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` this machine cannot run, before any data or model is loaded."""
    if device is not None:
        from agnet.device import choose_device

        choose_device(device)


def describe_os_error(error: OSError) -> str | None:
    """One line for an operating-system error (full disk, missing file, permissions), or None for
    an OSError without an errno (a library's own failure, which is left to show its traceback)."""
    if error.errno is None:
        return None
    where = error.filename if error.filename is not None else None
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if error.errno == errno.ENOSPC else "disk quota exceeded"
        target = f"while writing {where}" if where is not None else "while writing the output"
        return (f"{what} {target}; free some space and run the command again (outputs are renamed into "
                "place only when complete, so nothing partial was kept)")
    reasons = {
        errno.ENOENT: "no such file or directory",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EISDIR: "is a directory (expected a file)",
        errno.ENOTDIR: "a part of the path is not a directory",
        errno.EROFS: "read-only file system",
    }
    reason = reasons.get(error.errno, error.strerror or os.strerror(error.errno))
    if where is None:
        return reason
    extra = f" -> {error.filename2}" if error.filename2 is not None else ""
    return f"{where}{extra}: {reason}"


def _report(message: str, max_lines: int | None = MAX_ERROR_LINES) -> None:
    lines = message.splitlines() or [""]
    if max_lines is not None and len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], f"... ({len(lines) - max_lines + 1} more lines)"]
    print("agnet: error: " + "\n".join(lines), file=sys.stderr)
LOG_LEVELS = ("debug", "info", "warning", "error")

log = logging.getLogger("agnet")


def configure_logging(level: str) -> None:
    """Send the package's log records to stderr at ``level`` (called once per run of the program)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("agnet")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _cmd_synth(args: argparse.Namespace) -> int:
    from agnet.data.synth.vehicleid import synth_vehicleid
    from agnet.data.synth.veri import synth_veri

    scale = 1.0 if args.release else args.release_scale
    if scale is not None:
        # the release fixes these; a value given anyway would be silently ignored
        fixed = ["--vehicles"] * (args.vehicles is not None) + ["--models"] * (args.models is not None)
        fixed += ["--labelled-fraction"] * (args.labelled_fraction is not None)
        fixed += ["--cameras"] * (args.format == "veri" and args.cameras is not None)
        if fixed:
            raise AgnetError(f"{', '.join(fixed)} cannot be combined with --release/--release-scale: "
                             "a release-size twin takes its counts from the release")
    if args.format == "veri":
        synth_veri(args.out_dir, vehicles=args.vehicles or 100, cameras=args.cameras or 20, seed=args.seed,
                   workers=args.workers, release_scale=scale)
    else:
        synth_vehicleid(args.out_dir, vehicles=args.vehicles or 200, cameras=args.cameras or 6, seed=args.seed,
                        models=args.models or 24, labelled_fraction=args.labelled_fraction or 0.6,
                        workers=args.workers, release_scale=scale)
    size = "release-size " if scale == 1.0 else f"{scale:g}x release-size " if scale else ""
    print(f"wrote synthetic {size}{args.format} twin to {args.out_dir}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from agnet.data.sources import obtain

    kind, location = next((k, getattr(args, k)) for k in ("url", "archive", "directory") if getattr(args, k))
    root = obtain(args.format, kind, location, args.dest, args.output, sha256=args.sha256, progress=not args.quiet)
    print(f"{args.format} dataset at {root} (locator {args.output})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from agnet.data.verify import verify_dataset, write_report

    report = verify_dataset(args.format, args.root, strict=args.strict, check_pixels=not args.no_pixels)
    if args.output:
        write_report(report, args.output)
    for line in report["errors"]:
        print(f"error: {line}", file=sys.stderr)
    for line in report["strict"]["deviations"]:
        print(f"strict: {line}", file=sys.stderr)
    for line in report["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    counts = ", ".join(f"{split}: {c['images']} images / {c['identities']} ids" for split, c in report.get("splits", {}).items())
    print(f"{args.format} at {report['root']}: {'valid' if report['valid'] else 'INVALID'}" + (f" ({counts})" if counts else ""))
    return 0 if report["valid"] else 1


def _cmd_manifest(args: argparse.Namespace) -> int:
    from agnet.data.manifest import make_manifest

    frame = make_manifest(args.format, args.root, args.output, train_vehicles=args.train_vehicles,
                          holdout_vehicles=args.holdout_vehicles, holdout_seed=args.holdout_seed)
    counts = frame["split"].value_counts().to_dict()
    print(f"wrote {args.output}: {len(frame)} rows " + json.dumps(counts))
    return 0


def _cmd_grid(args: argparse.Namespace) -> int:
    from agnet.data.grid import sample_grid

    sample_grid(args.format, args.root, args.output, vehicles=args.rows, per_vehicle=args.cols, seed=args.seed)
    print(f"wrote {args.output}")
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from agnet.settings import load_plan

    plan = load_plan(*args.config)
    stages = {}
    for key in plan.documents:
        stages.setdefault(key.split("/")[0], []).append(key.split("/", 1)[1])
    print(f"{' + '.join(map(str, args.config))}: valid")
    print("settings documents (agnet config settings CONFIG --key STAGE/NAME): " + "; ".join(
        f"{stage}: {', '.join(names)}" for stage, names in stages.items()))
    return 0


def _cmd_config_settings(args: argparse.Namespace) -> int:
    from agnet.fileio import write_text
    from agnet.settings import document_text, load_plan

    plan = load_plan(*args.config)
    if args.key is None:
        for key in plan.documents:
            print(key)
        return 0
    text = document_text(plan.document(args.key))
    if args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _operational(args: argparse.Namespace, section: str, plan) -> dict:
    """The operational settings of a job: the config's (or the defaults, with --settings), then the flags given."""
    from agnet.settings import OPERATIONAL, OPERATIONAL_DEFAULTS

    values = dict(plan.operational(section) if plan is not None else OPERATIONAL_DEFAULTS[section])
    for key in OPERATIONAL[section]:
        given = getattr(args, key, None)
        if given is not None:
            values[key] = given
    if section == "training" and isinstance(values["decoded_cache"], str) and values["decoded_cache"] != "auto":
        values["decoded_cache"] = values["decoded_cache"] == "true"
    return values


def _document(args: argparse.Namespace, stage: str, conflicts: dict[str, object]):
    """(settings document or None, plan or None): ``--settings FILE`` or ``--config`` files, exactly one of them;
    ``conflicts`` are flags that choose settings and so cannot be combined with a settings document."""
    from agnet.settings import load_plan, read_document

    if args.settings is not None:
        given = [flag for flag, value in conflicts.items() if value]
        if given:
            raise AgnetError(f"{', '.join(given)} cannot be combined with --settings: the document fixes them")
        if args.settings_sha256 is not None:
            from agnet.fileio import sha256_file

            actual = sha256_file(args.settings) if args.settings.is_file() else None
            if actual != args.settings_sha256:
                raise AgnetError(f"{args.settings} does not hold the settings planned for this job (sha256 "
                                 f"{str(actual)[:12]}… vs {args.settings_sha256[:12]}…): it is stale or was edited; "
                                 "delete it and rerun the workflow, which writes it again")
        return read_document(args.settings, stage), None
    if args.settings_sha256 is not None:
        raise AgnetError("--settings-sha256 checks a --settings document; none was given")
    return None, load_plan(*args.config)


def _cmd_train(args: argparse.Namespace) -> int:
    from agnet.settings import train_settings, training_document
    from agnet.train.loop import TrainingInterrupted, train

    check_device(args.device)
    document, plan = _document(args, "train", {})
    if document is None:
        if args.variant is None:
            raise AgnetError("--variant is required with --config")
        document = training_document(plan.config, args.variant)
    elif args.variant is not None and args.variant != document["variant"]:
        raise AgnetError(f"{args.settings}: the settings of variant {document['variant']!r}, not {args.variant!r}")
    settings = train_settings(document, _operational(args, "training", plan))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    allow = tuple(k.strip() for k in (args.allow_changed or "").split(",") if k.strip())
    try:
        record = train(settings, args.manifest, args.out, args.seed, resume=args.resume, weights_cache=args.weights_cache,
                       cache_dir=args.cache_dir, device=args.device, progress=not args.no_progress,
                       threads=args.threads, allow_changed=allow)
    except TrainingInterrupted as interrupted:
        print(f"agnet: {interrupted}", file=sys.stderr)
        return 128 + interrupted.signum
    final = record["final"]
    if record.get("already_complete"):
        print(f"{args.out}/model.pt: this run is already complete (same settings, seed and data); nothing to do")
        return 0
    length = (f"truncated after {record['steps']} steps (max_steps)" if record.get("truncated")
              else f"{final['epoch']} epochs")
    print(f"trained {settings.variant} seed {args.seed}: {length}, loss {final['loss_total']:.4f}, "
          f"train ID accuracy {final['acc_id']:.3f} -> {args.out}/model.pt")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from agnet.extract import extract
    from agnet.settings import extraction_settings

    check_device(args.device)
    document, plan = _document(args, "extract", {"--protocol": args.protocol, "--dataset": args.dataset})
    if document is None and args.dataset in plan.config["datasets"] and not args.protocol:
        from agnet.settings import extraction_document  # a dataset of the config: the workflow's own document

        document = extraction_document(plan.config, args.dataset)
    if document is None:
        settings, dataset = extraction_settings(args.protocol), args.dataset
    else:
        settings, dataset = document["settings"], document["dataset"]
    operational = _operational(args, "evaluation", plan)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    images = None if settings["images"] == "all" else settings["images"]
    provenance = extract(args.model, args.manifest, args.out, batch_size=operational["batch_size"],
                         workers=operational["workers"], device=args.device, dataset=dataset,
                         protocols=images, progress=not args.no_progress)
    log.info("wrote %s (%s, %s seed %s, %s)", args.out, provenance["dataset"], provenance["variant"],
             provenance["seed"], provenance["device"])
    return 0


def _descriptors_held(features_path, evaluation: dict) -> list[str] | None:
    """The configured descriptors a features file can give (All needs Attr): all of them for an AGNet model, ID
    alone for a model without the attribute branch (bot); None (= the configured list) where the file gives all."""
    from agnet.extract import stored_descriptors

    held = stored_descriptors(features_path)
    wanted = list(evaluation["descriptors"])
    usable = [d for d in wanted if d in held or (d == "All" and {"Attr", "ID"} <= held)]
    return None if usable == wanted else usable or None


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from agnet.data.manifest import read_manifest
    from agnet.evaluate import EvalSettings, evaluate_run
    from agnet.extract import check_features, load_features
    from agnet.fileio import sha256_file, write_text
    from agnet.protocols import check_for_format, manifest_protocols
    from agnet.settings import evaluation_settings

    document, plan = _document(args, "evaluate", {"--descriptor": args.descriptor, "--protocol": args.protocol,
                                                  "--dataset": args.dataset})
    frame, meta = read_manifest(args.manifest)
    if document is None and args.dataset is not None:
        from agnet.settings import evaluation_document  # a dataset of the config: the workflow's own document

        if args.dataset not in plan.config["datasets"]:
            raise AgnetError(f"--dataset {args.dataset!r} is not a dataset of the config "
                             f"({', '.join(plan.config['datasets'])})")
        document = evaluation_document(plan.config, args.dataset)
        if args.descriptor or args.protocol:
            document["settings"] = evaluation_settings(plan.config["evaluation"],
                                                       list(dict.fromkeys(args.protocol or document["settings"]["protocols"])),
                                                       list(dict.fromkeys(args.descriptor or [])) or None)
    if document is None:
        evaluation = plan.config["evaluation"]
        protocols = list(dict.fromkeys(args.protocol or manifest_protocols(frame, meta, evaluation)))
        asked = list(dict.fromkeys(args.descriptor or [])) or _descriptors_held(args.features, evaluation)
        chosen = evaluation_settings(evaluation, protocols, asked)
    else:
        chosen = document["settings"]
    check_for_format(chosen["protocols"], meta["format"], str(args.manifest))
    settings = EvalSettings.from_settings(chosen)
    features = load_features(args.features, alpha=chosen.get("alpha"), descriptors=chosen["descriptors"])
    check_features(features, args.features, manifest_path=args.manifest, model_path=args.model)
    if document is not None and features["provenance"].get("dataset") != document["dataset"]:
        raise AgnetError(f"{args.features}: features of dataset {features['provenance'].get('dataset')!r}, but "
                         f"{args.settings} evaluates {document['dataset']!r}")
    queries: list | None = [] if args.queries is not None else None
    records = evaluate_run(features, frame, meta, chosen["descriptors"], chosen["protocols"], settings, queries)
    provenance = {**features["provenance"], "features": str(args.features), "features_sha256": sha256_file(args.features)}
    provenance.setdefault("dataset", meta["format"])
    if queries is not None:  # written first: metrics.json names the per-query file it goes with
        from agnet.queries import write_queries

        write_queries(args.queries, queries, provenance)
        provenance["queries"], provenance["queries_sha256"] = str(args.queries), sha256_file(args.queries)
    if args.settings is not None:
        provenance["settings"], provenance["settings_sha256"] = str(args.settings), sha256_file(args.settings)
    document_out = {"provenance": provenance, "evaluation": chosen, "records": records}
    from agnet.sensitivity import run_sweep  # All at every α of evaluation.alpha_sweep, from the loaded features

    document_out.update(run_sweep(features, frame, chosen, settings))
    write_text(args.output, json.dumps(document_out, indent=2) + "\n")
    for record in records:
        log.info("%s %s: mAP %.2f, Rank-1 %.2f", record["protocol"], record["descriptor"], 100 * record["mAP"],
                 100 * record["rank1"])
    log.info("wrote %d results to %s", len(records), args.output)
    return 0


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from agnet.aggregate import aggregate

    summary = aggregate(args.metrics, args.out)
    log.info("aggregated %d metrics files into %s/summary.csv (%d rows)", len(args.metrics), args.out, len(summary))
    return 0


def _report_datasets(args: argparse.Namespace, *jobs: str) -> dict:
    """A report command's settings: from its document (--settings, one of ``jobs``) or resolved from --config
    (for the first of ``jobs``)."""
    from agnet.settings import report_document

    document, plan = _document(args, "report", {})
    if document is None:
        document = report_document(plan.config, jobs[0])
    elif document.get("key") not in jobs:
        raise AgnetError(f"{args.settings}: the settings of report job {document.get('key')!r}, not of "
                         f"{' or '.join(jobs)}")
    return document["settings"]


def _cmd_report_tables(args: argparse.Namespace) -> int:
    from agnet.aggregate import read_table
    from agnet.fileio import sha256_file
    from agnet.report.tables import write_tables

    settings = _report_datasets(args, "tables")
    source = {"path": str(args.summary), "sha256": sha256_file(args.summary)}
    written = write_tables(read_table(args.summary, "summary"), settings["datasets"], args.out, source=source)
    print(f"wrote {len(written)} table files to {args.out}")
    return 0


def _cmd_report_claims(args: argparse.Namespace) -> int:
    from agnet.aggregate import read_table
    from agnet.fileio import sha256_file
    from agnet.report.claims import check_all, write_claims
    from agnet.report.contrasts import measure

    datasets = _report_datasets(args, "claims")["datasets"]
    runs = read_table(args.runs, "runs")
    queries = None
    if args.queries:
        from agnet.queries import load_for_runs
        from agnet.report.claims import QueryIndex

        queries = QueryIndex(load_for_runs(args.queries, runs))
    verdicts = check_all(runs, datasets, queries=queries)
    shown = runs[runs["dataset"].isin([ctx["dataset"] for ctx in datasets.values()])]
    write_claims(verdicts, datasets, args.markdown, args.json,
                 source={"path": str(args.runs), "sha256": sha256_file(args.runs)}, contrasts=measure(shown, queries))
    print(f"checked {len(verdicts)} claims -> {args.markdown}")
    return 0


def _cmd_report_figures(args: argparse.Namespace) -> int:
    from agnet.report.make_figures import make_figures

    jobs = ["figures_cmc", "figures_illustrations", "figures_training"]
    if args.illustrate:  # resolved from --config: the job that illustrates
        jobs.insert(0, jobs.pop(1))
    settings = _report_datasets(args, *jobs)
    illustrate = {name: (features, manifest) for name, features, manifest in args.illustrate}
    logs: dict[str, list[Path]] = {}
    for variant, path in args.train_log:
        logs.setdefault(variant, []).append(Path(path))
    written = make_figures(settings, args.out, args.cmc, illustrate, logs)
    log.info("wrote %d figure files to %s", len(written), args.out)
    return 0


def _cmd_report_sensitivity(args: argparse.Namespace) -> int:
    from agnet.report.sensitivity import make_sensitivity

    written = make_sensitivity(args.metrics, _report_datasets(args, "sensitivity"), args.tables, args.figures)
    log.info("wrote %s", ", ".join(map(str, written)))
    return 0


def _cmd_weights_fetch(args: argparse.Namespace) -> int:
    from agnet.weights import fetch_main

    path = fetch_main(args.backbone, args.cache)
    if args.record:
        from agnet.fileio import sha256_file, write_text

        record = {"backbone": args.backbone, "path": str(path.resolve()), "sha256": sha256_file(path)}
        write_text(args.record, json.dumps(record, indent=2) + "\n")
    print(f"ImageNet weights for {args.backbone}: {path}")
    return 0


def _add_config(parser: argparse.ArgumentParser, stage: str) -> None:
    """Where a stage's settings come from: ``--settings FILE`` (the document the workflow writes under
    ``results/settings/``) or the repeatable ``--config`` (config files merged in order, as Snakemake's
    ``--configfile``, resolved by the same function)."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--settings", type=Path, metavar="FILE",
                       help=f"the {stage} settings document (results/settings/{stage}/...json, written by the "
                            "workflow; `agnet config settings` prints one)")
    where.add_argument("--config", type=Path, action="append",
                       help="workflow config file; repeat to merge (later files override, as --configfile)")
    parser.add_argument("--settings-sha256", metavar="HEX",
                        help="refuse a --settings document whose sha256 differs (the workflow passes the one it planned)")


def _choice(*values: str):
    def parse(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(values)}, got {text!r}")
        return text

    parse.__name__ = "choice"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``agnet`` program."""
    parser = _Parser(prog="agnet", description="AGNet vehicle re-ID reproducibility suite.")
    parser.add_argument("--version", action="version", version=f"agnet {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="messages shown on stderr (default: info)")
    parser.add_argument("-v", "--verbose", action="store_const", const="debug", dest="log_level",
                        help="same as --log-level debug")
    groups = parser.add_subparsers(dest="group", required=True, metavar="{data,train,extract,evaluate,aggregate,report,weights,config}")

    data = groups.add_parser("data", help="obtain, synthesise, verify and index datasets")
    data_cmds = data.add_subparsers(dest="command", required=True)

    synth = data_cmds.add_parser("synth", help="write a synthetic twin in the real on-disk format")
    synth.add_argument("format", choices=FORMATS)
    synth.add_argument("out_dir", type=_output_dir)
    synth.add_argument("--vehicles", type=_positive, help="identities (default: veri 100, vehicleid 200)")
    synth.add_argument("--cameras", type=_positive, help="cameras (default: veri 20, vehicleid 6)")
    synth.add_argument("--seed", type=_seed, default=0)
    synth.add_argument("--models", type=_positive, help="vehicleid: number of car models (type classes; default 24)")
    synth.add_argument("--labelled-fraction", type=float,
                       help="vehicleid: fraction of vehicles with attribute labels (default 0.6)")
    synth.add_argument("--workers", type=_positive, help="rendering processes (default: all cores)")
    size = synth.add_mutually_exclusive_group()
    size.add_argument("--release", action="store_true",
                      help="the real release's exact counts, crop and JPEG sizes (passes verify --strict)")
    size.add_argument("--release-scale", type=float, metavar="F",
                      help="the release's counts times F in (0, 1] (1 = --release)")
    synth.set_defaults(func=_cmd_synth)

    fetch = data_cmds.add_parser("fetch", help="make a dataset available from a URL, an archive or a directory")
    fetch.add_argument("format", choices=FORMATS)
    where = fetch.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="http(s) URL of the dataset archive (resumable download)")
    where.add_argument("--archive", help="local archive (.zip, .tar[.gz|.bz2|.xz])")
    where.add_argument("--directory", help="already-extracted dataset root (used in place)")
    fetch.add_argument("--dest", type=_output_dir, required=True, help="folder for downloads and unpacked archives")
    fetch.add_argument("--sha256", help="expected sha256 of the archive")
    fetch.add_argument("-o", "--output", type=_output_file, required=True, help="dataset.json locator to write")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(func=_cmd_fetch)

    verify = data_cmds.add_parser("verify", help="check a dataset; exit 0 if valid, 1 if not")
    verify.add_argument("format", choices=FORMATS)
    verify.add_argument("root", type=Path, help="dataset root or dataset.json")
    verify.add_argument("--strict", action="store_true", help="also require the published counts of the release")
    verify.add_argument("--no-pixels", action="store_true", help="skip decoding every image")
    verify.add_argument("-o", "--output", type=_output_file, help="JSON report to write")
    verify.set_defaults(func=_cmd_verify)

    manifest = data_cmds.add_parser("manifest", help="write the per-image Parquet manifest")
    manifest.add_argument("format", choices=FORMATS)
    manifest.add_argument("root", type=Path, help="dataset root or dataset.json")
    manifest.add_argument("-o", "--output", type=_output_file, required=True)
    manifest.add_argument("--train-vehicles", choices=("attribute-labelled", "all"), default="attribute-labelled",
                          help="training vehicles kept (default: those with colour and type labels, as the paper)")
    manifest.add_argument("--holdout-vehicles", type=_int_at_least(0), default=0, metavar="N",
                          help="hold N training vehicles out of training (split 'val'; "
                          "extracted, not evaluated: no configuration uses it)")
    manifest.add_argument("--holdout-seed", type=_seed, default=0, metavar="S", help="seed of the held-out draw")
    manifest.set_defaults(func=_cmd_manifest)

    grid = data_cmds.add_parser("grid", help="save a picture grid of sample images (rows: vehicles)")
    grid.add_argument("format", choices=FORMATS)
    grid.add_argument("root", type=Path, help="dataset root or dataset.json")
    grid.add_argument("-o", "--output", type=_output_file, required=True)
    grid.add_argument("--rows", type=_positive, default=8)
    grid.add_argument("--cols", type=_positive, default=8)
    grid.add_argument("--seed", type=_seed, default=0)
    grid.set_defaults(func=_cmd_grid)

    train = groups.add_parser("train", help="train one (dataset, variant, seed) run")
    _add_config(train, "train")
    train.add_argument("--manifest", type=Path, required=True, help="dataset manifest (Parquet)")
    train.add_argument("--variant", help="a key of `variants` in the config (with --config; a settings document "
                                         "names its own)")
    train.add_argument("--seed", type=_seed, required=True)
    train.add_argument("--out", type=_output_dir, required=True, help="run directory")
    train.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt if present")
    train.add_argument("--weights-cache", type=Path, default=Path("results/weights"),
                       help="folder of downloaded ImageNet weights")
    train.add_argument("--cache-dir", type=Path, default=Path("results/cache"),
                       help="folder of decoded-image caches (training.decoded_cache)")
    train.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    train.add_argument("--threads", type=_positive, help="CPU threads for torch (default: torch's choice)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--allow-changed", metavar="KEYS",
                       help="with --resume: comma-separated schedule settings that may differ from the checkpoint's "
                            "(lr, lr_milestones, lr_gamma, epochs, max_steps), e.g. `lr` after a divergence; "
                            "recorded in run.json 'resumes'")
    ops = train.add_argument_group("operational settings (how the job runs, not what it computes; default: the "
                                   "config's, or config.yaml's with --settings; never a reason to retrain)")
    ops.add_argument("--workers", type=_int_at_least(0), help="data-loading processes")
    ops.add_argument("--log-every", type=_positive, help="steps between reads of the loss sums")
    ops.add_argument("--decoded-cache", type=_choice("auto", "true", "false"), help="decode images once into a cache")
    ops.add_argument("--channels-last", type=_choice("auto", "on", "off"), help="channels_last memory format")
    ops.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                     help="deterministic kernels")
    ops.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="torch.compile the forward pass")
    train.set_defaults(func=_cmd_train)

    extract = groups.add_parser("extract", help="write the Attr and ID descriptors of a trained run")
    _add_config(extract, "extract")
    extract.add_argument("--model", type=Path, required=True)
    extract.add_argument("--manifest", type=Path, required=True)
    extract.add_argument("--out", type=_output_file, required=True)
    extract.add_argument("--dataset", help="with --config: the dataset label recorded with the features (default: the "
                                           "manifest's format); a dataset of the config is extracted exactly as the "
                                           "workflow does (its evaluated lists)")
    extract.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    extract.add_argument("--threads", type=_positive)
    extract.add_argument("--protocol", action="append",
                         help="with --config: only the images this protocol reads (repeatable; VehicleID: vehicleid-<N> "
                              "keeps the images of test_list_<N>; default: every evaluation image)")
    extract.add_argument("--no-progress", action="store_true")
    extract.add_argument("--batch-size", type=_positive, help="operational: images per forward pass")
    extract.add_argument("--workers", type=_int_at_least(0), help="operational: image-decoding processes")
    extract.set_defaults(func=_cmd_extract)

    evaluate = groups.add_parser("evaluate", help="CMC/mAP of a trained run: every descriptor x protocol, or those given")
    _add_config(evaluate, "evaluate")
    evaluate.add_argument("--features", type=Path, required=True)
    evaluate.add_argument("--manifest", type=Path, required=True)
    evaluate.add_argument("--model", type=Path, help="model.pt the features must come from (sha256 checked)")
    evaluate.add_argument("--dataset", help="with --config: a dataset of the config, evaluated exactly as the workflow "
                                            "evaluates it (its protocols; default: the manifest's lists)")
    evaluate.add_argument("--descriptor", choices=("Attr", "ID", "All"), action="append",
                          help="with --config: only this descriptor (repeatable; default: evaluation.descriptors)")
    evaluate.add_argument("--protocol", action="append",
                          help="with --config: only this protocol: veri, veri-str, veri-st or vehicleid-<N> (repeatable; "
                               "default: all of the manifest's)")
    evaluate.add_argument("-o", "--output", type=_output_file, required=True, help="metrics JSON of the run")
    evaluate.add_argument("--queries", type=_output_file,
                          help="also write every query's AP and first-match rank (Parquet; the claims' bootstrap over "
                               "test vehicles reads it)")
    evaluate.set_defaults(func=_cmd_evaluate)

    aggregate = groups.add_parser("aggregate", help="collect metrics files into tidy tables")
    aggregate.add_argument("metrics", type=Path, nargs="+")
    aggregate.add_argument("--out", type=_output_dir, required=True)
    aggregate.set_defaults(func=_cmd_aggregate)

    report = groups.add_parser("report", help="Tables I-V and the claims check")
    report_cmds = report.add_subparsers(dest="command", required=True)
    tables = report_cmds.add_parser("tables", help="table{1..5}.{tex,md}: the paper's rows and ours (Table V: the baselines)")
    _add_config(tables, "report")
    tables.add_argument("--summary", type=Path, required=True, help="results/metrics/summary.csv")
    tables.add_argument("--out", type=Path, required=True)
    tables.set_defaults(func=_cmd_report_tables)
    claims = report_cmds.add_parser("claims", help="the paper's claims with verdicts, and the paper against itself")
    _add_config(claims, "report")
    claims.add_argument("--runs", type=Path, required=True, help="results/metrics/runs.csv (one row per run)")
    claims.add_argument("--queries", type=Path, nargs="+", default=[],
                        help="the runs' per-query files (agnet evaluate --queries): the test set's uncertainty joins "
                             "the seeds' (a paired bootstrap over test vehicles)")
    claims.add_argument("--markdown", type=_output_file, required=True)
    claims.add_argument("--json", type=_output_file, required=True)
    claims.set_defaults(func=_cmd_report_claims)
    figures = report_cmds.add_parser("figures", help="Figures 5-8 and training curves (PDF + PNG)")
    _add_config(figures, "report")
    figures.add_argument("--cmc", type=Path, help="cmc.parquet written by `agnet aggregate` (Fig. 5/6)")
    figures.add_argument("--illustrate", nargs=3, action="append", default=[], metavar=("DATASET", "FEATURES", "MANIFEST"),
                         help="features and manifest of the run shown in Fig. 7/8 for a dataset (repeat per format)")
    figures.add_argument("--train-log", nargs=2, action="append", default=[], metavar=("VARIANT", "LOG"),
                         help="a train_log.csv of the VeRi dataset and its variant (repeat per variant and seed)")
    figures.add_argument("--out", type=Path, required=True)
    figures.set_defaults(func=_cmd_report_figures)
    sensitivity = report_cmds.add_parser("sensitivity", help="alpha (Eq. 5) swept and cross-fitted; the ALS "
                                         "constants' variants (sensitivity.{md,tex}, alpha_sensitivity.{png,pdf})")
    _add_config(sensitivity, "report")
    sensitivity.add_argument("--metrics", type=Path, nargs="+", required=True, help="every run's metrics.json")
    sensitivity.add_argument("--tables", type=_output_dir, required=True, help="folder of sensitivity.{md,tex}")
    sensitivity.add_argument("--figures", type=_output_dir, required=True, help="folder of alpha_sensitivity.*")
    sensitivity.set_defaults(func=_cmd_report_sensitivity)

    weights = groups.add_parser("weights", help="pretrained weights")
    weights_cmds = weights.add_subparsers(dest="command", required=True)
    fetch_weights = weights_cmds.add_parser("fetch", help="download torchvision's ImageNet weights, hash-checked")
    fetch_weights.add_argument("backbone")
    fetch_weights.add_argument("--cache", type=Path, required=True)
    fetch_weights.add_argument("--record", type=_output_file, help="JSON record (path, sha256) to write for the workflow")
    fetch_weights.set_defaults(func=_cmd_weights_fetch)

    config = groups.add_parser("config", help="configuration utilities")
    config_cmds = config.add_subparsers(dest="command", required=True)
    check = config_cmds.add_parser("check", help="validate workflow config files (merged in order): the schema and "
                                                 "every rule the workflow applies")
    check.add_argument("config", type=Path, nargs="+")
    check.set_defaults(func=_cmd_config_check)
    show = config_cmds.add_parser("settings", help="the settings documents of a config: their keys, or one of them")
    show.add_argument("config", type=Path, nargs="+")
    show.add_argument("--key", help="e.g. train/agnet_asl, extract/veri, evaluate/veri, report/tables")
    show.add_argument("-o", "--output", type=_output_file, help="write the document here instead of stdout")
    show.set_defaults(func=_cmd_config_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the program; returns the exit status."""
    args = build_parser().parse_args(argv)
    debug = os.environ.get("AGNET_DEBUG", "") not in ("", "0")
    configure_logging(args.log_level)
    try:
        return args.func(args)
    except AgnetError as error:
        if debug:
            raise
        # `config check` exists to list every problem; elsewhere a long message is cut to a few lines
        _report(str(error), None if args.func is _cmd_config_check else MAX_ERROR_LINES)
        return 1
    except KeyboardInterrupt:
        print("agnet: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        message = describe_os_error(error)
        if message is None or debug:
            raise
        _report(message)
        return 1


if __name__ == "__main__":
    sys.exit(main())
