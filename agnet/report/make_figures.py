"""All figures of the report from the files the workflow names (called by ``agnet report figures``).

Writes, under ``out_dir`` as PDF and PNG: ``fig5_cmc_veri``, ``fig6_cmc_vehicleid``, ``fig7_tsne``
(VeRi test descriptors), ``fig8_retrieval_veri``, ``fig8_retrieval_vehicleid`` and
``training_curves`` (VeRi). Every input is passed explicitly: the CMC table, per dataset the features
and manifest to illustrate (which run that is, is the config's ``figures`` choice, resolved by
:func:`agnet.config.figure_run` in the workflow), and the training logs per variant. Nothing is found
by globbing or by parsing folder names. Illustrations use the All descriptor; every title says when
the data is a synthetic twin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from agnet.errors import AgnetError
from agnet.report.figures import cmc_figure, retrieval_figure, training_curves, tsne_figure
from agnet.report.tables import contexts_from_config

SYNTHETIC_NOTE = "synthetic twin (not the real dataset)"


def make_figures(config: dict[str, Any], cmc_path: str | Path, illustrate: Mapping[str, tuple[str | Path, str | Path]],
                 train_logs: Mapping[str, Sequence[str | Path]], out_dir: str | Path) -> list[Path]:
    """Every figure; returns the written paths.

    ``illustrate``: dataset name -> (features.pt, manifest.parquet) of the run the figures show, for the
    first VeRi-format and VehicleID-format dataset of ``run``; ``train_logs``: variant -> the VeRi dataset's
    ``train_log.csv`` files (one per seed)."""
    contexts = contexts_from_config(config)
    out_dir = Path(out_dir)
    try:
        cmc = pd.read_parquet(cmc_path)
    except (OSError, ValueError) as error:
        raise AgnetError(f"{cmc_path}: unreadable CMC table ({error})") from None
    written: list[Path] = []
    for fmt, figure in (("veri", "fig5_cmc_veri"), ("vehicleid", "fig6_cmc_vehicleid")):
        if fmt not in contexts:
            raise AgnetError(f"the figures need a {fmt}-format dataset in `run`")
        context = contexts[fmt]
        note = SYNTHETIC_NOTE if context["synthetic"] else ""
        written += cmc_figure(cmc, context["dataset"], out_dir / figure, title_note=note)
        if context["dataset"] not in illustrate:
            raise AgnetError(f"no features given to illustrate dataset {context['dataset']!r} "
                             f"(given: {', '.join(illustrate) or 'none'})")
        features, manifest = illustrate[context["dataset"]]
        if fmt == "veri":
            written += tsne_figure(features, manifest, out_dir / "fig7_tsne", title_note=note)
        written += retrieval_figure(features, manifest, out_dir / f"fig8_retrieval_{fmt}", title_note=note,
                                    distance=config["evaluation"]["distance"])
    veri = contexts["veri"]
    written += training_curves({variant: [Path(p) for p in paths] for variant, paths in train_logs.items()},
                               out_dir / "training_curves", title_note=SYNTHETIC_NOTE if veri["synthetic"] else "")
    return written
