"""The sensitivity report (not in the paper): Eq. 5's α and the ALS constants θ, α, β of Eq. 7.

Read from the per-run ``metrics.json`` files (``alpha_sweep``, ``alpha_crossfit`` and the All records; see
:mod:`agnet.sensitivity`) of the datasets the report shows, and written as

* ``sensitivity.md`` / ``sensitivity.tex``: per dataset and protocol, mAP of All at every swept α, mean ± sd over
  seeds per variant that has an All row in Tables III/IV (Only-ID's row is its ID descriptor), the configured α
  marked; the α cross-fitted over two folds of test vehicles, per fold and seed, with its mAP beside the configured
  α's; and the ALS arms — trained variants that differ from AGNet-ASL only in θ/α/β — against AGNet-ASL (All's
  mAP and Rank-1 on every protocol), or, with none trained, the config lines that add one;
* ``alpha_sensitivity.png`` / ``.pdf``: mAP vs α, one panel per dataset/protocol, one line per variant with a ± sd
  band over seeds, the configured α marked.

Every file is written atomically; a malformed input is an error naming the file and the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from agnet.errors import AgnetError
from agnet.fileio import write_text

SYNTHETIC_NOTE = "SYNTHETIC TWIN, not the real dataset"
FORMAT_ORDER = ("veri", "vehicleid")


# ------------------------------------------------------------------------------------------ reading


def read_sensitivity(paths: Sequence[str | Path], settings: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Tidy tables of the metrics files of the shown datasets: ``points`` (dataset, variant, seed, protocol, alpha,
    mAP, rank1, rank5), ``crossfit`` (one row per run, protocol and fold) and ``records`` (All's mAP and Rank-1 per
    run and protocol). Each file is checked (:func:`agnet.aggregate.read_metrics`), its α against the settings'."""
    from agnet.aggregate import read_metrics

    if not paths:
        raise AgnetError("no metrics files given (agnet evaluate's metrics.json of every run)")
    shown = {entry["dataset"] for entry in settings["datasets"].values()}
    configured = settings.get("alpha")
    points, fits, records, seen, swept = [], [], [], {}, {}
    for path in map(Path, paths):
        data = read_metrics(path)
        provenance = data["provenance"]
        dataset, variant, seed = str(provenance["dataset"]), str(provenance["variant"]), int(provenance["seed"])
        if dataset not in shown:
            continue
        key = (dataset, variant, seed)
        if key in seen:
            raise AgnetError(f"{path} and {seen[key]} both hold dataset {dataset}, variant {variant}, seed {seed}")
        seen[key] = path
        if "All" not in (data.get("evaluation") or {}).get("descriptors", ["All"]):
            continue  # a model without the attribute branch (bot): scored on ID alone, no α to vary
        evaluated = (data.get("evaluation") or {}).get("alpha")
        if configured is not None and evaluated is not None and float(evaluated) != float(configured):
            raise AgnetError(f"{path}: evaluation.alpha is {evaluated}, but the report's settings say {configured}: "
                             "the metrics are stale; rerun the evaluation")
        has = "alpha_sweep" in data
        first = swept.setdefault(dataset, (has, path))
        if first[0] != has:
            raise AgnetError(f"{path}: {'has' if has else 'lacks'} alpha_sweep while {first[1]} "
                             f"{'has' if first[0] else 'lacks'} it: one of them is stale; rerun the evaluation")
        common = {"dataset": dataset, "variant": variant, "seed": seed}
        for entry in data.get("alpha_sweep") or []:
            points.append({**common, **{k: entry[k] for k in ("protocol", "alpha", "mAP", "rank1", "rank5")}})
        for fit in data.get("alpha_crossfit") or []:
            for fold in fit["folds"]:
                fits.append({**common, "protocol": fit["protocol"], "crossfit_mAP": fit["mAP"],
                             "configured_alpha": fit.get("configured_alpha"),
                             "configured_mAP": fit.get("configured_mAP"), "best_alpha": fit.get("best_alpha"),
                             "best_mAP": fit.get("best_mAP"), "fold": fold.get("fold"), "fold_alpha": fold["alpha"]})
        for record in data["records"]:
            if record["descriptor"] == "All":
                records.append({**common, "protocol": record["protocol"], "mAP": record["mAP"],
                                "rank1": record.get("rank1")})
    if not seen:
        raise AgnetError(f"none of the {len(paths)} metrics file(s) is of a dataset the report shows "
                         f"({', '.join(sorted(shown))})")
    columns = {"points": ["dataset", "variant", "seed", "protocol", "alpha", "mAP", "rank1", "rank5"],
               "crossfit": ["dataset", "variant", "seed", "protocol", "crossfit_mAP", "configured_alpha",
                            "configured_mAP", "best_alpha", "best_mAP", "fold", "fold_alpha"],
               "records": ["dataset", "variant", "seed", "protocol", "mAP", "rank1"]}
    return {name: pd.DataFrame(rows, columns=columns[name])
            for name, rows in (("points", points), ("crossfit", fits), ("records", records))}


# ------------------------------------------------------------------------------------------ numbers


def _stats(values) -> tuple[float, float, int]:
    values = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                        dtype=float)
    if not len(values):
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values)


def _cell(values, scale: float = 100.0) -> str:
    mean, sd, n = _stats(values)
    if n == 0:
        return "n/a"
    return f"{scale * mean:.2f} ± {scale * sd:.2f}" if n > 1 else f"{scale * mean:.2f} (1 seed)"


def alpha_variants(points: pd.DataFrame) -> list[str]:
    """Variants of the α sweep: those whose Tables III/IV row is All (not a single-row variant such as Only-ID,
    whose row is its ID descriptor), in the figures' order."""
    from agnet.report.figures import _variant_order
    from agnet.report.paper import single_row_descriptors

    single = single_row_descriptors()
    return _variant_order([v for v in points["variant"].unique() if single.get(v, "All") == "All"])


def _panels(settings: dict[str, Any], points: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """(dataset, protocol, synthetic) of every panel / table section, VeRi first, protocols in natural order."""
    panels = []
    for fmt in FORMAT_ORDER:
        entry = settings["datasets"].get(fmt)
        if entry is None:
            continue
        protocols = points.loc[points["dataset"] == entry["dataset"], "protocol"].unique()
        for protocol in sorted(protocols, key=lambda p: (len(p), p)):
            panels.append((entry["dataset"], protocol, bool(entry["synthetic"])))
    return panels


def _alpha_text(alpha: float, configured: float | None) -> str:
    return f"{alpha:g} (configured)" if configured is not None and alpha == configured else f"{alpha:g}"


def alpha_table(points: pd.DataFrame, dataset: str, protocol: str, variants: list[str],
                configured: float | None) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of one (dataset, protocol): α rows, a mAP (%) column per variant."""
    from agnet.report.figures import variant_label

    part = points[(points["dataset"] == dataset) & (points["protocol"] == protocol)]
    variants = [v for v in variants if (part["variant"] == v).any()]  # a variant not run here has no column
    headers = ["α"] + [f"{variant_label(v)} (n={part.loc[part['variant'] == v, 'seed'].nunique()})" for v in variants]
    rows = []
    for alpha in sorted(part["alpha"].unique()):
        row = [_alpha_text(alpha, configured)]
        for variant in variants:
            row.append(_cell(part.loc[(part["variant"] == variant) & (part["alpha"] == alpha), "mAP"]))
        rows.append(row)
    return headers, rows


def crossfit_rows(crossfit: pd.DataFrame, panels, variants: list[str]) -> tuple[list[str], list[list[str]]]:
    """One row per (dataset, protocol, variant): configured α's mAP, the cross-fitted mAP and their difference
    (mean ± sd over seeds), the α per fold of each seed, and the test-tuned best α (optimistic)."""
    from agnet.report.figures import variant_label

    headers = ["dataset", "protocol", "variant", "seeds", "mAP at configured α", "cross-fitted mAP",
               "cross-fitted − configured", "α per fold (fold 0/1, per seed)", "test-tuned best α (optimistic)"]
    rows = []
    for dataset, protocol, _ in panels:
        for variant in variants:
            part = crossfit[(crossfit["dataset"] == dataset) & (crossfit["protocol"] == protocol)
                            & (crossfit["variant"] == variant)]
            if part.empty:
                continue
            runs = part.drop_duplicates("seed").sort_values("seed")
            diff = (runs["crossfit_mAP"] - runs["configured_mAP"]).tolist()
            folds = "; ".join(f"s{seed}: " + "/".join(f"{a:g}" for a in group.sort_values("fold")["fold_alpha"])
                              for seed, group in part.groupby("seed", sort=True))
            best = ", ".join(f"{a:g}" for a in runs["best_alpha"])
            rows.append([dataset, protocol, variant_label(variant), str(len(runs)), _cell(runs["configured_mAP"]),
                         _cell(runs["crossfit_mAP"]), _cell(diff), folds, best])
    return headers, rows


def als_rows(records: pd.DataFrame, settings: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Table-III-style rows of AGNet-ASL and its ALS arms: All's mAP / Rank-1 (%) per dataset and protocol, mean ± sd
    over seeds with the seed count; None when no arm is configured."""
    from agnet.report.figures import variant_label

    als = settings.get("als") or {}
    arms = als.get("variants") or {}
    if not arms or not als.get("baseline"):
        return None
    constants = {als["baseline"]: als.get("baseline_constants") or {}, **arms}
    columns = []
    for fmt in FORMAT_ORDER:
        entry = settings["datasets"].get(fmt)
        if entry is not None:
            protocols = records.loc[records["dataset"] == entry["dataset"], "protocol"].unique()
            columns += [(entry["dataset"], p) for p in sorted(protocols, key=lambda p: (len(p), p))]
    headers = ["variant", "θ", "α", "β"] + [f"{d} {p}: mAP / Rank-1 (seeds)" for d, p in columns]
    rows = []
    for variant, values in constants.items():
        row = [variant_label(variant)] + [f"{values.get(k, math.nan):g}" for k in ("theta", "alpha", "beta")]
        for dataset, protocol in columns:
            part = records[(records["dataset"] == dataset) & (records["protocol"] == protocol)
                           & (records["variant"] == variant)]
            row.append("not trained" if part.empty else
                       f"{_cell(part['mAP'])} / {_cell(part['rank1'])} ({part['seed'].nunique()})")
        rows.append(row)
    return headers, rows


def als_howto(settings: dict[str, Any]) -> str:
    """What to add to the config to train an ALS arm (no arm is trained)."""
    als = settings.get("als") or {}
    base = als.get("baseline_constants") or {"theta": 0.2, "alpha": 0.1, "beta": 1.0}
    theta = 0.4 if base["theta"] != 0.4 else 0.3
    name = f"agnet_asl_theta{theta:g}"
    lead = ("No ALS arm is trained (a variant whose only difference from `agnet_asl` is in `als` θ/α/β)."
            if als.get("baseline") else "`agnet_asl` is not trained, so there is no baseline for ALS arms.")
    return (f"{lead} θ, α and β need retraining. To sweep θ, add to the config (an overlay such as "
            "`workflow/configs/demo.yaml` works too), then rerun the workflow: only the new variant's runs train.\n\n"
            "```yaml\nvariants:\n"
            f"  {name}: {{verification_loss: als, als: {{theta: {theta:g}, alpha: {base['alpha']:g}, "
            f"beta: {base['beta']:g}}}}}\n"
            f"train_variants: [only_id, agnet_ce, agnet_asl, {name}]  # the existing list plus the arm\n"
            "```\n\n"
            "(`variant_datasets: {" + name + ": [<dataset>]}` keeps it to one dataset.)\n")


# ------------------------------------------------------------------------------------------ writing


def _latex_escape(text: str) -> str:
    from agnet.report.tables import _latex_escape as escape

    return escape(text).replace("α", "$\\alpha$").replace("θ", "$\\theta$").replace("β", "$\\beta$")


def _latex_table(headers: list[str], rows: list[list[str]], caption: str, label: str) -> str:
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{_latex_escape(caption)}}}",
             f"\\label{{{label}}}", "\\resizebox{\\linewidth}{!}{%", f"\\begin{{tabular}}{{l{'c' * (len(headers) - 1)}}}",
             "\\toprule", " & ".join(_latex_escape(h) for h in headers) + " \\\\", "\\midrule"]
    for row in rows:
        cells = [_latex_escape(c) for c in row]
        if "(configured)" in row[0]:
            cells = [f"\\textbf{{{c}}}" for c in cells]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}", ""]
    return "\n".join(lines)


def _markdown(headers, rows, bold_configured: bool = False) -> str:
    body = [[f"**{c}**" for c in row] if bold_configured and "(configured)" in row[0] else row for row in rows]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"


def write_sensitivity(tables: dict[str, pd.DataFrame], settings: dict[str, Any], tables_dir: str | Path,
                      figures_dir: str | Path, sources: Sequence[dict[str, str]] = ()) -> list[Path]:
    """Write ``sensitivity.{md,tex}`` under ``tables_dir`` and ``alpha_sensitivity.{png,pdf}`` under ``figures_dir``
    (module docstring); ``tables`` from :func:`read_sensitivity`, ``settings`` the report/sensitivity document's."""
    points, crossfit, records = tables["points"], tables["crossfit"], tables["records"]
    configured = settings.get("alpha")
    variants = alpha_variants(points) if not points.empty else []
    panels = _panels(settings, points)
    md = ["# Sensitivity of the constants the paper does not give (not in the paper)", ""]
    tex = ["% Sensitivity of AGNet's unpublished constants: written by `agnet report sensitivity`."]
    md += ["## α of Eq. 5 (All = [f_attr, (1 − α)·f_ID])", ""]
    if configured is None:
        md += ["All is not evaluated (`evaluation.descriptors`), so α has no effect and nothing is swept.", ""]
    elif not panels:
        md += [f"No α sweep in the metrics (`evaluation.alpha_sweep` is empty). Configured α = {configured:g}.", ""]
    else:
        md += [(f"mAP (%) of the All descriptor at each α, mean ± sd over seeds (n = seeds); the configured "
               f"α = {configured:g} (bold) is the one Tables I–IV use, fixed a priori, never tuned on test labels. "
               "α = 1 zeroes the ID half (All ranks as Attr); α = 0 is the plain concatenation [f_attr, f_ID]. "
               "Only the protocols without re-ranking are swept; VehicleID values are means over the configured "
               "random gallery draws. Variants whose Tables III/IV row is not All (Only-ID: ID) are left out."), ""]
        for dataset, protocol, synthetic in panels:
            headers, rows = alpha_table(points, dataset, protocol, variants, configured)
            note = f" — {SYNTHETIC_NOTE}" if synthetic else ""
            md += [f"### {dataset}, {protocol}{note}", "", _markdown(headers, rows, bold_configured=True)]
            tex.append(_latex_table(headers, rows, f"mAP (%) of All vs alpha (Eq. 5) on {dataset}, {protocol}"
                                    f"{note}; mean ± sd over seeds; configured alpha in bold.",
                                    f"tab:alpha-{dataset}-{protocol}"))
        md += ["## α chosen without test labels: 2-fold cross-fitting over test vehicles", "",
               ("The paper protocol has no validation split of test identities. Each protocol's test vehicles are "
               "split in two seeded folds; the α with the best mean AP over one fold's queries scores the other "
               "fold's queries, and vice versa. The cross-fitted mAP is therefore an estimate of the mAP of an α "
               "tuned on held-out identities; it is compared with the configured α's mAP (mean ± sd over seeds, "
               "%). The test-tuned best α is chosen on the very queries it scores: for reference only."), ""]
        headers, rows = crossfit_rows(crossfit, panels, variants)
        md.append(_markdown(headers, rows) if rows else "No cross-fitted α in the metrics.\n")
        if rows:
            tex.append(_latex_table(headers, rows, "Alpha cross-fitted over two folds of test vehicles vs the "
                                    "configured alpha (mAP %, mean ± sd over seeds).", "tab:alpha-crossfit"))
    md += ["## ALS constants θ, α, β of Eq. 7", ""]
    als = als_rows(records, settings)
    if als is None:
        md.append(als_howto(settings))
    else:
        headers, rows = als
        md += [("All descriptor, mean ± sd over seeds (%), seed count in brackets: AGNet-ASL and the trained variants "
               "that differ from it only in θ/α/β (config `variants`)."), "", _markdown(headers, rows)]
        tex.append(_latex_table(headers, rows, "ALS constants (Eq. 7): All's mAP / Rank-1 (%), mean ± sd over "
                                "seeds.", "tab:als-sensitivity"))
    if sources:
        md += ["", f"Computed from {len(sources)} metrics file(s):", "",
               *(f"- {s['path']} (sha256 {s['sha256']})" for s in sources)]
        tex += [f"% computed from {s['path']} (sha256 {s['sha256']})" for s in sources]
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    written = [tables_dir / "sensitivity.md", tables_dir / "sensitivity.tex"]
    write_text(written[0], "\n".join(md).rstrip() + "\n")
    write_text(written[1], "\n".join(tex) + "\n")
    written += alpha_figure(points, panels, variants, configured, figures_dir / "alpha_sensitivity")
    return written


def alpha_figure(points: pd.DataFrame, panels, variants: list[str], configured: float | None,
                 out_stem: str | Path) -> list[Path]:
    """mAP (%) vs α, one panel per (dataset, protocol), one line per variant with a ± sd band, the configured α as a
    dashed line; a single message panel when nothing was swept."""
    from agnet.report.figures import _plotting, _save, _variant_colour, variant_label

    with _plotting() as plt:
        if not panels:
            fig, ax = plt.subplots(figsize=(5, 2.5))
            ax.axis("off")
            ax.text(0.5, 0.5, "no α sweep in the metrics\n(evaluation.alpha_sweep empty or All not evaluated)",
                    ha="center", va="center")
            return _save(plt, fig, out_stem)
        ncols = min(len(panels), 3)
        nrows = math.ceil(len(panels) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.9 * ncols + 0.3, 3.2 * nrows + 0.5), squeeze=False,
                                 layout="constrained")
        for ax, (dataset, protocol, synthetic) in zip(axes.flat, panels, strict=False):
            part = points[(points["dataset"] == dataset) & (points["protocol"] == protocol)]
            for variant in variants:
                rows = part[part["variant"] == variant]
                if rows.empty:
                    continue
                grouped = rows.groupby("alpha")["mAP"]
                mean = 100 * grouped.mean()
                sd = 100 * grouped.std(ddof=1).fillna(0.0)
                colour = _variant_colour(variant, variants)
                ax.plot(mean.index, mean.values, marker="o", ms=3, color=colour,
                        label=f"{variant_label(variant)} (n={rows['seed'].nunique()})")
                ax.fill_between(mean.index, (mean - sd).values, (mean + sd).values, color=colour, alpha=0.18, lw=0)
            if configured is not None:
                ax.axvline(configured, color="black", ls="--", lw=1, label=f"configured α = {configured:g}")
            ax.set_title(f"{dataset}, {protocol}" + ("\n(synthetic twin)" if synthetic else ""), fontsize=10)
            ax.set_xlabel("α (Eq. 5)")
            ax.set_ylabel("mAP of All (%)")
            ax.set_xlim(-0.02, 1.02)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False)
        fig.suptitle("Sensitivity of the All descriptor to α (Eq. 5); band: ± sd over seeds")
        return _save(plt, fig, out_stem)


def make_sensitivity(metrics: Sequence[str | Path], settings: dict[str, Any], tables_dir: str | Path,
                     figures_dir: str | Path) -> list[Path]:
    """:func:`read_sensitivity` then :func:`write_sensitivity` (``agnet report sensitivity``)."""
    from agnet.fileio import sha256_file

    for key in ("datasets", "alpha", "als"):
        if key not in settings:
            raise AgnetError(f"the settings given lack {key!r}: pass the report/sensitivity settings document")
    tables = read_sensitivity(metrics, settings)
    sources = [{"path": str(p), "sha256": sha256_file(p)} for p in metrics]
    return write_sensitivity(tables, settings, tables_dir, figures_dir, sources)

