"""The figures of the report from the files the workflow names (called by ``agnet report figures``).

Writes, under ``out_dir`` as PDF and PNG, each family from its own inputs: ``fig5_cmc_veri`` and
``fig6_cmc_vehicleid`` (the CMC table); ``fig7_tsne`` (VeRi test descriptors), ``fig8_retrieval_veri`` and
``fig8_retrieval_vehicleid`` (the illustrated runs); ``training_curves`` (VeRi's training logs). Every input
is passed explicitly: the CMC table, per dataset the features and manifest to illustrate (which run that
is, is the config's ``figures`` choice, resolved by :func:`agnet.settings.figure_run` in the workflow), and
the training logs per variant. Nothing is found by globbing or by parsing folder names. Illustrations use
the descriptor, distance and α of the ``report/figures`` settings document; every title says when the data is a
synthetic twin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agnet.errors import AgnetError
from agnet.report.figures import cmc_figure, retrieval_figure, training_curves, tsne_figure

SYNTHETIC_NOTE = "synthetic twin (not the real dataset)"


def make_figures(settings: dict[str, Any], out_dir: str | Path, cmc_path: str | Path | None = None,
                 illustrate: Mapping[str, tuple[str | Path, str | Path]] | None = None,
                 train_logs: Mapping[str, Sequence[str | Path]] | None = None) -> list[Path]:
    """The figures whose inputs are given; returns the written paths. ``settings``: the ``report/figures``
    document's settings (:func:`agnet.settings.report_document`).

    Three independent families, so that the workflow can make each as soon as its inputs exist:
    ``cmc_path`` (cmc.parquet) -> Fig. 5/6; ``illustrate``: dataset name -> (features.pt, manifest.parquet) of the
    run the figures show, for the first VeRi-format and VehicleID-format dataset of ``run`` -> Fig. 7/8;
    ``train_logs``: variant -> the VeRi dataset's ``train_log.csv`` files (one per seed) -> training curves."""
    if cmc_path is None and not illustrate and not train_logs:
        raise AgnetError("no figure inputs given (a CMC table, runs to illustrate or training logs)")
    contexts, shown = settings["datasets"], settings.get("illustration")
    if illustrate and shown is None:
        raise AgnetError("the settings given do not say how to illustrate runs (descriptor, distance, alpha): pass "
                         "the report/figures_illustrations settings document")
    needed = ({"veri", "vehicleid"} if cmc_path is not None or illustrate else set()) | ({"veri"} if train_logs else set())
    for fmt in sorted(needed):
        if fmt not in contexts:
            raise AgnetError(f"the figures need a {fmt}-format dataset in `run`")
    out_dir = Path(out_dir)
    written: list[Path] = []
    if cmc_path is not None:
        from agnet.aggregate import read_table

        cmc = read_table(cmc_path, "cmc")
        for fmt, figure in (("veri", "fig5_cmc_veri"), ("vehicleid", "fig6_cmc_vehicleid")):
            context = contexts[fmt]
            written += cmc_figure(cmc, context["dataset"], out_dir / figure, title_note=_note(context))
    if illustrate:
        for fmt in ("veri", "vehicleid"):
            context = contexts[fmt]
            if context["dataset"] not in illustrate:
                raise AgnetError(f"no features given to illustrate dataset {context['dataset']!r} "
                                 f"(given: {', '.join(illustrate)})")
            features, manifest = illustrate[context["dataset"]]
            if fmt == "veri":
                written += tsne_figure(features, manifest, out_dir / "fig7_tsne", title_note=_note(context),
                                       descriptor=shown["descriptor"], alpha=shown["alpha"])
            written += retrieval_figure(features, manifest, out_dir / f"fig8_retrieval_{fmt}",
                                        title_note=_note(context), distance=shown["distance"],
                                        descriptor=shown["descriptor"], alpha=shown["alpha"])
    if train_logs:
        written += training_curves({variant: [Path(p) for p in paths] for variant, paths in train_logs.items()},
                                   out_dir / "training_curves", title_note=_note(contexts["veri"]))
    return written


def _note(context: Mapping[str, Any]) -> str:
    return SYNTHETIC_NOTE if context["synthetic"] else ""
