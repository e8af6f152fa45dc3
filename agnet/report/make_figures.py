"""All figures of the report from a finished run of the workflow (called by ``agnet report figures``).

Writes, under ``out_dir`` as PDF and PNG: ``fig5_cmc_veri``, ``fig6_cmc_vehicleid``, ``fig7_tsne``
(VeRi test descriptors), ``fig8_retrieval_veri``, ``fig8_retrieval_vehicleid`` and
``training_curves`` (VeRi). Illustrations use the AGNet-ASL run of the first seed and the All
descriptor; every title says when the data is a synthetic twin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from agnet.report.figures import cmc_figure, retrieval_figure, training_curves, tsne_figure
from agnet.report.tables import contexts_from_config

SYNTHETIC_NOTE = "synthetic twin (not the real dataset)"


def make_figures(config: dict[str, Any], metrics_dir: str | Path, runs_dir: str | Path,
                 out_dir: str | Path) -> list[Path]:
    """Every figure; returns the written paths."""
    contexts = contexts_from_config(config)
    metrics_dir, runs_dir, out_dir = Path(metrics_dir), Path(runs_dir), Path(out_dir)
    cmc = pd.read_parquet(metrics_dir / "cmc.parquet")
    first_seed = config["seeds"][0]
    written: list[Path] = []
    for fmt, figure in (("veri", "fig5_cmc_veri"), ("vehicleid", "fig6_cmc_vehicleid")):
        context = contexts[fmt]
        note = SYNTHETIC_NOTE if context["synthetic"] else ""
        written += cmc_figure(cmc, context["dataset"], out_dir / figure, title_note=note)
        run = runs_dir / context["dataset"] / "agnet_asl" / f"seed{first_seed}"
        manifest = Path("results/data") / context["dataset"] / "manifest.parquet"
        if fmt == "veri":
            written += tsne_figure(run / "features.pt", manifest, out_dir / "fig7_tsne", title_note=note)
        written += retrieval_figure(run / "features.pt", manifest, out_dir / f"fig8_retrieval_{fmt}", title_note=note)
    veri = contexts["veri"]
    logs = {variant: sorted((runs_dir / veri["dataset"] / variant).glob("seed*/train_log.csv"))
            for variant in config["train_variants"]}
    written += training_curves(logs, out_dir / "training_curves",
                               title_note=SYNTHETIC_NOTE if veri["synthetic"] else "")
    return written
