"""The paper's figures (§IV.D–E) from the pipeline's outputs, plus training curves.

* :func:`cmc_figure`: Fig. 5 (VeRi-776, one panel per protocol) and Fig. 6 (VehicleID, one panel per
  test size): rank 1–50 CMC of every variant × descriptor, mean over seeds with a min–max band.
* :func:`tsne_figure`: Fig. 7, t-SNE of the evaluation images' descriptors coloured by colour and type.
* :func:`retrieval_figure`: Fig. 8, queries with their top-k gallery images (green: same vehicle).
* :func:`training_curves`: every loss term per epoch, one line per variant (not in the paper).

Each writes ``<out_stem>.pdf`` and ``<out_stem>.png`` atomically and returns both paths. The small
pure helpers (:func:`row_label`, :func:`panel_order`, :func:`cmc_curves`,
:func:`choose_queries`) hold the decisions the tests check. Plotting libraries are imported lazily, so
``from agnet.report.figures import VARIANT_LABELS, row_label`` stays cheap for the table code.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agnet.errors import AgnetError
from agnet.fileio import atomic_path
from agnet.report.paper import single_row_descriptors

VARIANT_LABELS = {"only_id": "Only-ID", "agnet_ce": "AGNet-CE", "agnet_asl": "AGNet-ASL"}
DESCRIPTOR_ORDER = ("Attr", "ID", "All")
LOSS_TERMS = ("total", "category", "color", "type", "verify")
PNG_DPI = 200

# Colours per variant (seaborn "colorblind" hues), line styles per descriptor.
_VARIANT_COLOURS = {"only_id": "#555555", "agnet_ce": "#0173b2", "agnet_asl": "#d55e00"}
_EXTRA_COLOURS = ("#029e73", "#cc78bc", "#ca9161", "#56b4e9", "#ece133", "#fbafe4")
_DESCRIPTOR_STYLES = {"Attr": ":", "ID": "--", "All": "-"}
# Manifest colour names that are not matplotlib colour names (VehicleID spells silver "sliver").
_COLOUR_ALIASES = {"golden": "goldenrod", "sliver": "silver", "champagne": "#f7e7ce", "grey": "gray"}


def variant_label(variant: str) -> str:
    """The paper's name of a training variant (``agnet_asl`` → ``AGNet-ASL``); unknown names unchanged."""
    return VARIANT_LABELS.get(variant, variant)


def row_label(variant: str, descriptor: str) -> str:
    """The paper's table row label: ``("agnet_asl", "All")`` → ``AGNet-ASL-All``; Only-ID has a single row."""
    if variant == "only_id":
        return VARIANT_LABELS["only_id"]
    return f"{variant_label(variant)}-{descriptor}"


def _variant_order(variants) -> list[str]:
    known = [v for v in VARIANT_LABELS if v in set(variants)]
    return known + sorted(set(variants) - set(known))


def _variant_colour(variant: str, order: Sequence[str]) -> str:
    if variant in _VARIANT_COLOURS:
        return _VARIANT_COLOURS[variant]
    extras = [v for v in order if v not in _VARIANT_COLOURS]
    return _EXTRA_COLOURS[extras.index(variant) % len(_EXTRA_COLOURS)] if variant in extras else "#000000"


def _with_note(title: str, note: str) -> str:
    return f"{title}\n{note}" if note else title


# ------------------------------------------------------------------------------------------- output


@contextlib.contextmanager
def _plotting() -> Iterator[Any]:
    """pyplot on the Agg backend inside a seaborn whitegrid/paper rc context (global rcParams untouched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.15),
          "savefig.dpi": PNG_DPI, "pdf.fonttype": 42, "axes.titleweight": "bold"}
    with matplotlib.rc_context(rc):
        yield plt


def _save(plt, fig, out_stem: str | Path) -> list[Path]:
    """Write ``<out_stem>.pdf`` and ``.png`` (each via a temporary sibling + os.replace); close ``fig``."""
    stem = Path(out_stem)
    written = []
    try:
        for ext, metadata in (("pdf", {"CreationDate": None, "Creator": None, "Producer": None}),
                              ("png", {"Software": None})):
            target = stem.parent / f"{stem.name}.{ext}"  # not with_suffix: stems may contain dots
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=ext, dpi=PNG_DPI, bbox_inches="tight", pad_inches=0.05,
                            metadata=metadata)
            written.append(target)
    finally:
        plt.close(fig)
    return written


# ------------------------------------------------------------------------------------------- CMC


@dataclass(frozen=True)
class Curve:
    """One CMC curve of a panel: the mean over seeds and its min–max band (in %)."""

    variant: str
    descriptor: str
    label: str
    ranks: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_seeds: int


def _protocol_size(protocol: str) -> int | None:
    match = re.fullmatch(r"vehicleid-(\d+)", protocol)
    return int(match.group(1)) if match else None


def panel_order(protocols) -> list[str]:
    """Panel order: ``veri``, ``veri-str``, then VehicleID test sizes ascending numerically, then the rest."""
    protocols = list(dict.fromkeys(protocols))
    veri = [p for p in ("veri", "veri-str") if p in protocols]
    sizes = sorted((p for p in protocols if _protocol_size(p) is not None), key=_protocol_size)
    rest = sorted(p for p in protocols if p not in veri and p not in sizes)
    return veri + sizes + rest


def panel_title(protocol: str) -> str:
    """``vehicleid-800`` → ``Test size = 800``; the VeRi protocols by name."""
    size = _protocol_size(protocol)
    if size is not None:
        return f"Test size = {size}"
    return {"veri": "Visual features only", "veri-str": "With spatio-temporal re-ranking"}.get(protocol, protocol)


def cmc_curves(cmc: pd.DataFrame, dataset: str, protocol: str, max_rank: int = 50) -> list[Curve]:
    """The curves of one panel: each variant × descriptor (a single-row variant such as Only-ID: the descriptor of
    its table row only), in table order (Only-ID, AGNet-CE-Attr/ID/All, AGNet-ASL-Attr/ID/All, then other
    variants), ranks 1..max_rank."""
    rows = cmc[(cmc["dataset"] == dataset) & (cmc["protocol"] == protocol) & (cmc["rank"] <= max_rank)]
    single = single_row_descriptors()
    curves = []
    for variant in _variant_order(rows["variant"].unique()):
        of_variant = rows[rows["variant"] == variant]
        present = set(of_variant["descriptor"])
        if variant in single:
            descriptors = [single[variant]]
        else:
            descriptors = [d for d in DESCRIPTOR_ORDER if d in present] + sorted(present - set(DESCRIPTOR_ORDER))
        for descriptor in descriptors:
            part = of_variant[of_variant["descriptor"] == descriptor]
            if part.empty:
                continue
            wide = part.pivot_table(index="rank", columns="seed", values="cmc", aggfunc="mean").sort_index()
            values = wide.to_numpy(dtype=float) * 100.0
            curves.append(Curve(variant, descriptor, row_label(variant, descriptor),
                                wide.index.to_numpy(dtype=int), np.nanmean(values, axis=1),
                                np.nanmin(values, axis=1), np.nanmax(values, axis=1), wide.shape[1]))
    return curves


def _grid(n: int) -> tuple[int, int]:
    if n <= 3:
        return 1, n
    if n == 4:
        return 2, 2
    return math.ceil(n / 3), 3


def _legend_by_variant(fig, handles: dict[tuple[str, str], Any], variants: list[str], **kwargs) -> None:
    """A figure legend with one column per variant (blank cells pad the short Only-ID column)."""
    from matplotlib.lines import Line2D

    columns = [[h for (v, _), h in handles.items() if v == variant] for variant in variants]
    columns = [c for c in columns if c]
    depth = max(len(c) for c in columns)
    blank = Line2D([], [], linestyle="none", label=" ")
    ordered = [h for column in columns for h in column + [blank] * (depth - len(column))]
    fig.legend(handles=ordered, labels=[h.get_label() for h in ordered], ncol=len(columns), frameon=False,
               handlelength=3.2, columnspacing=2.0, **kwargs)


def cmc_figure(cmc: pd.DataFrame, dataset: str, out_stem: str | Path, *, title_note: str = "",
               max_rank: int = 50) -> list[Path]:
    """Fig. 5/6: CMC curves (rank 1..``max_rank``, in %) of ``dataset``, one panel per protocol in
    :func:`panel_order`; mean over seeds as the line, min–max over seeds as a band (≥ 2 seeds)."""
    missing = {"dataset", "variant", "seed", "descriptor", "protocol", "rank", "cmc"} - set(cmc.columns)
    if missing:
        raise AgnetError(f"CMC table lacks column(s) {', '.join(sorted(missing))}")
    rows = cmc[cmc["dataset"] == dataset]
    if rows.empty:
        known = ", ".join(sorted(map(str, cmc["dataset"].unique()))) or "none"
        raise AgnetError(f"no CMC rows for dataset {dataset!r} (datasets: {known})")
    # The paper's two panels: the spatio-temporal-only control (veri-st, descriptor "none": the same curve in every
    # run, no network) is a row of Table I, not a panel here.
    protocols = panel_order(rows.loc[rows["descriptor"] != "none", "protocol"].unique())
    panels = [(p, cmc_curves(rows, dataset, p, max_rank)) for p in protocols]
    seeds = max(c.n_seeds for _, curves in panels for c in curves)
    variants = _variant_order(rows["variant"].unique())

    with _plotting() as plt:
        nrows, ncols = _grid(len(panels))
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.9 * ncols + 0.3, 3.3 * nrows + 0.4), sharey=True,
                                 squeeze=False, layout="constrained")
        handles: dict[tuple[str, str], Any] = {}
        low_y = 100.0
        for ax, (protocol, curves) in zip(axes.flat, panels):
            for curve in curves:
                colour = _variant_colour(curve.variant, variants)
                style = _DESCRIPTOR_STYLES.get(curve.descriptor, "-.")
                width = 2.0 if curve.descriptor == "All" else 1.5
                (line,) = ax.plot(curve.ranks, curve.mean, color=colour, linestyle=style, linewidth=width,
                                  label=curve.label, zorder=3)
                if curve.n_seeds >= 2:
                    ax.fill_between(curve.ranks, curve.low, curve.high, color=colour, alpha=0.13, linewidth=0,
                                    zorder=2)
                handles.setdefault((curve.variant, curve.descriptor), line)
                low_y = min(low_y, float(np.nanmin(curve.low)))
            ax.set_title(panel_title(protocol))
            ax.set_xscale("log")
            ticks = [t for t in (1, 2, 5, 10, 20, 50) if t <= max_rank]
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
            ax.set_xlim(1, max_rank)
            ax.set_xlabel("Rank")
            ax.grid(True, which="minor", axis="x", linewidth=0.4, alpha=0.5)
        for ax in axes[:, 0]:
            ax.set_ylabel("Matching rate (%)")
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.get_layout_engine().set(w_pad=0.12, wspace=0.04)
        axes[0, 0].set_ylim(max(0.0, math.floor(low_y / 10.0) * 10.0), 100.5)
        band = f"line: mean over {seeds} seeds, band: min–max" if seeds >= 2 else "single seed"
        figure = "Fig. 5" if dataset.startswith("veri") else "Fig. 6" if dataset.startswith("vehicleid") else "CMC"
        fig.suptitle(_with_note(f"{figure}: CMC curves on {dataset} ({band})", title_note), fontsize="large")
        _legend_by_variant(fig, handles, variants, loc="outside lower center")
        return _save(plt, fig, out_stem)


# ------------------------------------------------------------------------------------------- shared


def _evaluation_rows(frame: pd.DataFrame, meta: dict) -> tuple[pd.DataFrame, str]:
    if meta.get("format") == "vehicleid" or "test" in set(frame["split"]):
        return frame[frame["split"] == "test"], "test"
    return frame[frame["split"] == "gallery"], "gallery"


def _normalised(features: dict[str, Any], descriptor: str, paths: Sequence[str]) -> np.ndarray:
    """Rows of ``features[descriptor]`` for ``paths`` as L2-normalised float32."""
    if descriptor not in features:
        raise AgnetError(f"unknown descriptor {descriptor!r} (features hold Attr, ID, All)")
    index = {p: i for i, p in enumerate(features["paths"])}
    missing = [p for p in paths if p not in index]
    if missing:
        raise AgnetError(f"features lack {len(missing)} image(s), e.g. {missing[0]}")
    x = features[descriptor][[index[p] for p in paths]].float().numpy()
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _descriptor_label(features: dict[str, Any], descriptor: str) -> str:
    variant = (features.get("provenance") or {}).get("variant")
    return row_label(variant, descriptor) if variant else descriptor


def _load(features_path, manifest_path, alpha: float) -> tuple[dict[str, Any], pd.DataFrame, dict]:
    from agnet.data.manifest import read_manifest
    from agnet.extract import check_features, load_features

    frame, meta = read_manifest(manifest_path)
    features = load_features(features_path, alpha=alpha)
    check_features(features, features_path, manifest_path=manifest_path)
    return features, frame, meta


# ------------------------------------------------------------------------------------------- t-SNE


def _class_name(names: Sequence[str], index: int, kind: str) -> str:
    name = names[index] if 0 <= index < len(names) else ""
    return name if name and name.isascii() else f"{kind} {index}"


def _colour_of(name: str) -> str | None:
    from matplotlib.colors import is_color_like

    name = _COLOUR_ALIASES.get(name.lower(), name.lower())
    return name if is_color_like(name) else None


def _type_palette(n: int) -> list:
    """Categorical colours without grey (grey marks the types left out of the legend)."""
    import seaborn as sns

    base = [c for i, c in enumerate(sns.color_palette("tab10", 10)) if i != 7] + [(0.1, 0.1, 0.1)]
    return base[:n] if n <= len(base) else sns.color_palette("husl", n)


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def tsne_figure(features_path: str | Path, manifest_path: str | Path, out_stem: str | Path, *,
                descriptor: str = "All", max_points: int = 1500, seed: int = 0, title_note: str = "",
                legend_types: int = 10, alpha: float = 0.5) -> list[Path]:
    """Fig. 7: t-SNE (init PCA, ``random_state=seed``) of the evaluation images' L2-normalised descriptors
    (VeRi: gallery; VehicleID: test), images with both a colour and a type label, at most ``max_points``
    (a seeded subsample); left panel coloured by colour, right by type (the ``legend_types`` most
    frequent types in colour, the rest grey)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    features, frame, meta = _load(features_path, manifest_path, alpha)
    rows, split = _evaluation_rows(frame, meta)
    rows = rows[rows["path"].isin(set(features["paths"]))].drop_duplicates("path")
    rows = rows[rows["color_id"].notna() & rows["type_id"].notna()].reset_index(drop=True)
    if len(rows) < 5:
        raise AgnetError(f"t-SNE needs at least 5 {split} images with colour and type labels, found {len(rows)}")
    rows = rows.iloc[_subsample(len(rows), max_points, seed)].reset_index(drop=True)
    x = _normalised(features, descriptor, list(rows["path"]))
    perplexity = float(min(30.0, max(2.0, (len(rows) - 1) / 3.0)))
    # One thread: the embedding does not depend on the core count, and OpenMP threads spinning on a busy
    # 2-core machine made it about 30x slower.
    with threadpool_limits(1):
        xy = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)

    colours = rows["color_id"].astype(int).to_numpy()
    types = rows["type_id"].astype(int).to_numpy()
    colour_names, type_names = list(meta.get("color_names", [])), list(meta.get("type_names", []))

    with _plotting() as plt:
        import seaborn as sns

        fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 5.4), layout="constrained")
        # Colour panel: draw each vehicle colour in its own colour where the name is one (dark edges keep
        # white/silver visible), else a categorical palette.
        present = sorted(set(colours))
        palette = sns.color_palette("tab10" if len(present) <= 10 else "husl", len(present))
        for k, cid in enumerate(present):
            name = _class_name(colour_names, cid, "colour")
            face = _colour_of(name) or palette[k]
            mask = colours == cid
            left.scatter(xy[mask, 0], xy[mask, 1], s=14, c=[face], edgecolors="#333333", linewidths=0.3,
                         label=f"{name} ({mask.sum()})", alpha=0.9)
        # Type panel: the most frequent types in colour, the rest grey underneath.
        kind = "model" if meta.get("format") == "vehicleid" else "type"
        counts = pd.Series(types).value_counts(sort=False)
        counts = counts.sort_index().sort_values(ascending=False, kind="stable")
        shown = list(counts.index[:legend_types])
        others = ~np.isin(types, shown)
        if others.any():
            right.scatter(xy[others, 0], xy[others, 1], s=10, c="#c8c8c8", linewidths=0,
                          label=f"other ({len(counts) - len(shown)} {kind}s, {others.sum()})")
        palette = _type_palette(len(shown))
        for k, tid in enumerate(shown):
            mask = types == tid
            right.scatter(xy[mask, 0], xy[mask, 1], s=14, c=[palette[k]], edgecolors="white", linewidths=0.3,
                          label=f"{_class_name(type_names, tid, kind)} ({mask.sum()})", alpha=0.9)
        for ax, title, heading in ((left, "Coloured by vehicle colour", "colour (images)"),
                                   (right, f"Coloured by vehicle {kind}", f"{kind} (images)")):
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
            ax.set_aspect("equal", adjustable="datalim")
            handles, labels = ax.get_legend_handles_labels()
            if ax is right and others.any():  # the grey "other" entry last
                handles, labels = handles[1:] + handles[:1], labels[1:] + labels[:1]
            ax.legend(handles, labels, title=heading, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      frameon=False, markerscale=1.5, fontsize="small", title_fontsize="small")
        label = _descriptor_label(features, descriptor)
        fig.suptitle(_with_note(f"Fig. 7: t-SNE of {label} descriptors of {len(rows)} {split} images"
                                f" (labelled with colour and type)", title_note),
                     fontsize="large")
        return _save(plt, fig, out_stem)


# ------------------------------------------------------------------------------------------- retrieval


def choose_queries(q_ids, n: int, seed: int, valid=None) -> np.ndarray:
    """Positions of ``n`` queries of distinct vehicles (seeded, then ordered by vehicle id); only positions
    where ``valid`` is true (default all). Fewer if there are fewer vehicles."""
    q_ids = np.asarray(q_ids)
    valid = np.ones(len(q_ids), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    vehicles = np.unique(q_ids[valid])
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(vehicles, size=min(n, len(vehicles)), replace=False)) if len(vehicles) else []
    return np.array([int(rng.choice(np.flatnonzero(valid & (q_ids == v)))) for v in chosen], dtype=int)


def _cell_image(path: Path, size: tuple[int, int], border: str | None, width: int):
    """The image letterboxed into ``size`` (w, h) on white, framed by ``width`` px of ``border``."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except OSError as error:
        raise AgnetError(f"{path}: cannot read image ({error})") from None
    inner = ImageOps.pad(image, size, method=Image.Resampling.LANCZOS, color=(255, 255, 255))
    return ImageOps.expand(inner, border=width, fill=border or (255, 255, 255))


def retrieval_figure(features_path: str | Path, manifest_path: str | Path, out_stem: str | Path, *,
                     descriptor: str = "All", n_queries: int = 5, top_k: int = 10, seed: int = 0,
                     protocol: str | None = None, distance: str = "euclidean", title_note: str = "",
                     alpha: float = 0.5) -> list[Path]:
    """Fig. 8: ``n_queries`` queries (distinct vehicles, seeded, each with a true match) with their ``top_k``
    gallery images; green frame = same vehicle, red = another vehicle. The split, the distance and the junk
    rule are the evaluation's own (:func:`agnet.protocols.query_gallery`, :func:`agnet.retrieval.top_k`);
    ``protocol`` defaults to ``veri`` on VeRi and trial 0 of the smallest test list on VehicleID."""
    from agnet.evaluate import features_of
    from agnet.protocols import has_true_match, manifest_test_lists, query_gallery
    from agnet.protocols import vehicleid as vehicleid_protocol
    from agnet.retrieval import top_k as retrieve

    features, frame, meta = _load(features_path, manifest_path, alpha)
    root = Path(meta["root"])
    if protocol is None:
        if meta.get("format") == "vehicleid" or "test" in set(frame["split"]):
            sizes = manifest_test_lists(frame)
            if not sizes:
                raise AgnetError(f"{manifest_path}: the VehicleID manifest has no test list (in_test_<N> column)")
            protocol = vehicleid_protocol(sizes[0])
        else:
            protocol = "veri"
    query, gallery, cams = query_gallery(frame, protocol)
    setting = "query vs gallery, same-camera junk removed" if cams else f"{protocol}, trial 0"
    picked = choose_queries(query["vehicle_id"].to_numpy(), n_queries, seed, has_true_match(query, gallery, cams))
    if len(picked) == 0:
        raise AgnetError("no query has a true match in the gallery")
    query = query.iloc[picked].reset_index(drop=True)
    g_ids = gallery["vehicle_id"].to_numpy()
    kwargs = ({"q_ids": query["vehicle_id"].to_numpy(), "g_ids": g_ids, "q_cams": query["camera_id"].to_numpy(),
               "g_cams": gallery["camera_id"].to_numpy()} if cams else {})
    tops = retrieve(features_of(features, descriptor, query["path"]), features_of(features, descriptor,
                    gallery["path"]), top_k, distance=distance, **kwargs)

    def caption(item: pd.Series) -> str:
        return f"{item['vehicle_id']}/c{int(item['camera_id']) + 1:03d}" if cams else f"{item['vehicle_id']}"

    # One cell shape for all images: the median aspect ratio of the shown images, 112 px high.
    from PIL import Image

    shown = [root / p for p in query["path"]] + [root / gallery["path"].iat[i] for t in tops for i in t]
    ratios = []
    for path in shown:
        with contextlib.suppress(OSError), Image.open(path) as image:
            ratios.append(image.width / max(1, image.height))
    aspect = float(np.clip(np.median(ratios) if ratios else 1.0, 0.5, 2.5))
    cell = (round(112 * aspect), 112)
    green, red, neutral = "#1a9641", "#d7191c", "#404040"

    with _plotting() as plt:
        cols = 1 + top_k
        width = 0.85 * aspect
        fig = plt.figure(figsize=(width * cols + 0.35, 0.85 * len(query) + 0.8), layout="constrained")
        grid = fig.add_gridspec(len(query), cols + 1, width_ratios=[1, 0.12] + [1] * top_k, wspace=0.02,
                                hspace=0.02)
        for r in range(len(query)):
            q = query.iloc[r]
            panels = [(q, None, "Query")] + [(gallery.iloc[i], bool(g_ids[i] == q["vehicle_id"]), f"Rank {k + 1}")
                                             for k, i in enumerate(tops[r])]
            for c, (item, correct, header) in enumerate(panels):
                ax = fig.add_subplot(grid[r, 0 if c == 0 else c + 1])
                frame_colour = neutral if correct is None else green if correct else red
                ax.imshow(_cell_image(root / item["path"], cell, frame_colour, 3 if correct is None else 7))
                ax.set_axis_off()
                ax.text(0.06, 0.93, caption(item), transform=ax.transAxes, ha="left", va="top", fontsize=6.5,
                        bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "alpha": 0.8, "linewidth": 0})
                if r == 0:
                    ax.set_title(header, fontsize="small", fontweight="bold" if c == 0 else "normal")
        label = _descriptor_label(features, descriptor)
        fig.suptitle(_with_note(f"Fig. 8: top-{top_k} retrieval with {label} ({setting}); "
                                "green frame: same vehicle, red: different vehicle", title_note), fontsize="medium")
        return _save(plt, fig, out_stem)


# ------------------------------------------------------------------------------------------- training


def _read_logs(paths: Sequence[Path]) -> list[pd.DataFrame]:
    frames = []
    for path in paths:
        try:
            frames.append(pd.read_csv(path))
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise AgnetError(f"{path}: unreadable training log ({error})") from None
        if "epoch" not in frames[-1]:
            raise AgnetError(f"{path}: training log has no 'epoch' column")
    return frames


def training_curves(logs: Mapping[str, Sequence[str | Path]], out_stem: str | Path, *,
                    title_note: str = "") -> list[Path]:
    """Every loss term (``loss_<term>`` for total, category, color, type, verify) per epoch: one panel per
    term, one line per variant (the mean over its seeds' logs) with a min–max band over seeds."""
    if not logs or not any(logs.values()):
        raise AgnetError("no training logs to plot")
    tables = {variant: _read_logs([Path(p) for p in paths]) for variant, paths in logs.items() if paths}
    variants = _variant_order(tables)
    with _plotting() as plt:
        fig, axes = plt.subplots(2, 3, figsize=(11.5, 6.4), layout="constrained")
        seeds = 0
        for ax, term in zip(axes.flat, LOSS_TERMS):
            column = f"loss_{term}"
            for variant in variants:
                parts = [t[["epoch", column]] for t in tables[variant] if column in t and t[column].notna().any()]
                if not parts:
                    continue
                seeds = max(seeds, len(parts))
                wide = pd.concat([p.set_index("epoch")[column].rename(i) for i, p in enumerate(parts)], axis=1)
                wide = wide.sort_index()
                colour = _variant_colour(variant, variants)
                ax.plot(wide.index, wide.mean(axis=1), color=colour, linewidth=1.8, marker="o", markersize=3,
                        label=variant_label(variant))
                if len(parts) >= 2:
                    ax.fill_between(wide.index, wide.min(axis=1), wide.max(axis=1), color=colour, alpha=0.15,
                                    linewidth=0)
            ax.set_title(f"{term.capitalize()} loss" if term != "total" else "Total loss (optimised)")
            ax.set_xlabel("Epoch")
            ax.set_ylabel("Loss")
            ax.xaxis.get_major_locator().set_params(integer=True)
        legend_ax = axes.flat[-1]
        legend_ax.set_axis_off()
        handles, labels = {}, {}
        for ax in axes.flat[:-1]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
                labels.setdefault(lab, lab)
        band = f"line: mean over {seeds} seeds, band: min–max" if seeds >= 2 else "single seed"
        legend_ax.legend(list(handles.values()), list(labels.values()), loc="center", frameon=False,
                         title=f"Variant\n({band})", fontsize="medium", alignment="center")
        fig.suptitle(_with_note("Training losses per epoch", title_note), fontsize="large")
        return _save(plt, fig, out_stem)
