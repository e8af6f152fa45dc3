"""The figure writers (Fig. 5–8 and training curves) and the pure helpers behind their choices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agnet.data.manifest import make_manifest, read_manifest
from agnet.data.synth.vehicleid import synth_vehicleid
from agnet.data.synth.veri import synth_veri
from agnet.errors import AgnetError
from agnet.fileio import sha256_file
from agnet.report import figures
from agnet.report.figures import (
    VARIANT_LABELS,
    choose_queries,
    cmc_curves,
    cmc_figure,
    panel_order,
    panel_title,
    retrieval_figure,
    row_label,
    training_curves,
    tsne_figure,
)
from agnet.retrieval import rank_gallery, top_k

NOTE = "synthetic twin (not the real dataset)"


def assert_figure_files(paths: list[Path], stem: Path) -> None:
    assert paths == [Path(f"{stem}.pdf"), Path(f"{stem}.png")]
    pdf, png = paths
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    with Image.open(png) as image:
        image.load()
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 200
    leftovers = [p.name for p in stem.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # the atomic writes renamed their temporaries into place


# ------------------------------------------------------------------------------------------- labels


def test_variant_labels_and_row_labels():
    assert VARIANT_LABELS == {"only_id": "Only-ID", "agnet_ce": "AGNet-CE", "agnet_asl": "AGNet-ASL"}
    assert row_label("agnet_asl", "All") == "AGNet-ASL-All"
    assert row_label("agnet_ce", "Attr") == "AGNet-CE-Attr"
    assert row_label("only_id", "All") == row_label("only_id", "ID") == "Only-ID"
    assert row_label("my_variant", "ID") == "my_variant-ID"


def test_panel_order_sorts_test_sizes_numerically():
    protocols = ["vehicleid-3200", "vehicleid-800", "vehicleid-2400", "vehicleid-1600"]
    assert panel_order(protocols) == ["vehicleid-800", "vehicleid-1600", "vehicleid-2400", "vehicleid-3200"]
    assert panel_order(["vehicleid-100", "vehicleid-25", "vehicleid-75", "vehicleid-50"]) == [
        "vehicleid-25", "vehicleid-50", "vehicleid-75", "vehicleid-100"]
    assert panel_order(["veri-str", "veri", "veri"]) == ["veri", "veri-str"]
    assert panel_title("vehicleid-800") == "Test size = 800"


def test_class_names_fall_back_for_non_ascii():
    names = ["sedan", "轿车01-2010款"]
    assert figures._class_name(names, 0, "model") == "sedan"
    assert figures._class_name(names, 1, "model") == "model 1"
    assert figures._class_name(names, 7, "type") == "type 7"


# ------------------------------------------------------------------------------------------- CMC


def tiny_cmc(dataset: str, protocols: list[str], seeds=(0, 1), ranks: int = 50) -> pd.DataFrame:
    rows = []
    for protocol in protocols:
        for v, variant in enumerate(["agnet_asl", "only_id", "agnet_ce"]):
            for d, descriptor in enumerate(["All", "ID", "Attr"]):
                for seed in seeds:
                    start = 0.2 + 0.05 * v + 0.02 * d + 0.04 * seed
                    curve = np.minimum(1.0, start + np.log(np.arange(1, ranks + 1)) / 5)
                    rows += [{"dataset": dataset, "variant": variant, "seed": seed, "descriptor": descriptor,
                              "protocol": protocol, "rank": r + 1, "cmc": float(c)} for r, c in enumerate(curve)]
    return pd.DataFrame(rows)


def test_cmc_curves_one_only_id_curve_in_table_order():
    cmc = tiny_cmc("veri-synth", ["veri"])
    curves = cmc_curves(cmc, "veri-synth", "veri")
    assert [c.label for c in curves] == ["Only-ID", "AGNet-CE-Attr", "AGNet-CE-ID", "AGNet-CE-All",
                                         "AGNet-ASL-Attr", "AGNet-ASL-ID", "AGNet-ASL-All"]
    only = curves[0]
    # Only-ID is drawn with the descriptor of its table row (paper_results.yaml: ID).
    assert (only.variant, only.descriptor, only.n_seeds) == ("only_id", "ID", 2)
    np.testing.assert_array_equal(only.ranks, np.arange(1, 51))
    # Only-ID's ID curve starts at 0.27 (seed 0) and 0.31 (seed 1): mean and min–max band in %.
    assert only.mean[0] == pytest.approx(29.0)
    assert (only.low[0], only.high[0]) == (pytest.approx(27.0), pytest.approx(31.0))
    assert all(c.high.max() <= 100.0 for c in curves)


def test_cmc_curves_single_seed_and_max_rank():
    cmc = tiny_cmc("vehicleid-synth", ["vehicleid-25"], seeds=(3,))
    curves = cmc_curves(cmc, "vehicleid-synth", "vehicleid-25", max_rank=10)
    assert {c.n_seeds for c in curves} == {1}
    assert all(len(c.ranks) == 10 and np.array_equal(c.low, c.high) for c in curves)


def test_cmc_figure_veri_and_vehicleid(tmp_path):
    cmc = pd.concat([tiny_cmc("veri-synth", ["veri-str", "veri"]),
                     tiny_cmc("vehicleid-synth", ["vehicleid-100", "vehicleid-25", "vehicleid-50", "vehicleid-75"])])
    stem = tmp_path / "fig5.veri"  # a dot in the stem must not be taken for a suffix
    assert_figure_files(cmc_figure(cmc, "veri-synth", stem, title_note=NOTE), stem)
    stem = tmp_path / "fig6"
    assert_figure_files(cmc_figure(cmc, "vehicleid-synth", stem, title_note=NOTE), stem)
    single = tiny_cmc("veri-synth", ["veri"], seeds=(0,))
    stem = tmp_path / "single"
    assert_figure_files(cmc_figure(single, "veri-synth", stem), stem)


def test_cmc_figure_rejects_unknown_dataset_and_bad_tables(tmp_path):
    cmc = tiny_cmc("veri-synth", ["veri"])
    with pytest.raises(AgnetError, match="veri-synth"):
        cmc_figure(cmc, "VeRi", tmp_path / "x")
    with pytest.raises(AgnetError, match="cmc"):
        cmc_figure(cmc.drop(columns="cmc"), "veri-synth", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- retrieval helpers


def test_top_k_skips_junk_only_with_cameras():
    g_ids = np.array([7, 7, 5, 7, 9])
    g_cams = np.array([0, 1, 0, 0, 2])
    # Query: vehicle 7 seen by camera 0; gallery 0 and 3 are junk (same vehicle, same camera) and nearest.
    dist = np.array([[0.0, 0.4, 0.3, 0.1, 0.2]])
    (with_junk_rule,) = rank_gallery(dist, g_ids, 3, q_ids=[7], q_cams=[0], g_cams=g_cams)
    assert with_junk_rule.tolist() == [4, 2, 1]
    (plain,) = rank_gallery(dist, g_ids, 3)  # VehicleID: no junk
    assert plain.tolist() == [0, 3, 4]
    (short,) = rank_gallery(dist, g_ids, 10, q_ids=[7], q_cams=[0], g_cams=g_cams)
    assert short.tolist() == [4, 2, 1]  # fewer than k left after junk removal
    ties = rank_gallery(np.zeros((2, 4)), np.arange(4), 2)
    assert [t.tolist() for t in ties] == [[0, 1], [0, 1]]  # stable on ties


def test_top_k_ranks_by_the_evaluation_distance():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    query = torch.tensor([[2.0, 0.1]])  # normalised: nearest is gallery 0, then 2, then 1
    for distance in ("euclidean", "cosine"):
        (order,) = top_k(query, gallery, 3, distance=distance)
        assert order.tolist() == [0, 2, 1]
    (junk,) = top_k(query, gallery, 2, q_ids=[5], g_ids=[5, 6, 7, 8], q_cams=[1], g_cams=[1, 0, 0, 0])
    assert junk.tolist() == [2, 1]  # gallery 0 is the same vehicle seen by the same camera


def test_choose_queries_distinct_vehicles_deterministic():
    q_ids = np.array([3, 3, 1, 1, 2, 2, 4, 4])
    valid = np.array([True, True, True, True, False, False, True, False])
    picked = choose_queries(q_ids, 5, seed=0, valid=valid)
    assert sorted(q_ids[picked].tolist()) == [1, 3, 4]  # vehicle 2 has no valid query; each vehicle once
    assert valid[picked].all()
    assert q_ids[picked].tolist() == sorted(q_ids[picked].tolist())
    np.testing.assert_array_equal(picked, choose_queries(q_ids, 5, seed=0, valid=valid))
    assert len(choose_queries(q_ids, 2, seed=1)) == 2


# ------------------------------------------------------------------------------------------- t-SNE and retrieval


def fake_features(manifest: Path, out: Path, dim: int = 16) -> Path:
    """Descriptors clustered by vehicle for every non-training image of the manifest."""
    frame, _ = read_manifest(manifest)
    paths = list(dict.fromkeys(frame.loc[frame["split"] != "train", "path"]))
    vehicle = dict(zip(frame["path"], frame["vehicle_id"]))
    rng = np.random.default_rng(0)
    centres = {v: rng.normal(size=dim) for v in sorted(set(vehicle.values()))}
    attr = np.stack([centres[vehicle[p]] + 0.3 * rng.normal(size=dim) for p in paths]).astype(np.float16)
    ident = np.stack([centres[vehicle[p]] + 0.3 * rng.normal(size=dim) for p in paths]).astype(np.float16)
    torch.save({"paths": paths, "Attr": torch.from_numpy(attr), "ID": torch.from_numpy(ident),
                "provenance": {"variant": "agnet_asl", "manifest_sha256": sha256_file(manifest)}}, out)
    return out


@pytest.fixture(scope="module")
def veri_twin(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("veri-twin")
    root = synth_veri(base / "VeRi", vehicles=12, cameras=3, seed=0, workers=1)
    manifest = base / "manifest.parquet"
    make_manifest("veri", root, manifest)
    return fake_features(manifest, base / "features.pt"), manifest


@pytest.fixture(scope="module")
def vehicleid_twin(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("vehicleid-twin")
    root = synth_vehicleid(base / "VehicleID", vehicles=24, cameras=4, seed=0, workers=1)
    manifest = base / "manifest.parquet"
    make_manifest("vehicleid", root, manifest)
    return fake_features(manifest, base / "features.pt"), manifest


@pytest.mark.parametrize("twin", ["veri_twin", "vehicleid_twin"])
def test_tsne_figure(twin, tmp_path, request):
    features, manifest = request.getfixturevalue(twin)
    stem = tmp_path / "fig7"
    assert_figure_files(tsne_figure(features, manifest, stem, max_points=60, title_note=NOTE), stem)
    stem = tmp_path / "fig7-id"
    assert_figure_files(tsne_figure(features, manifest, stem, descriptor="ID", legend_types=2), stem)


def test_tsne_figure_rejects_unknown_descriptor(veri_twin, tmp_path):
    features, manifest = veri_twin
    with pytest.raises(AgnetError, match="descriptor"):
        tsne_figure(features, manifest, tmp_path / "x", descriptor="Colour")


def test_figures_refuse_features_of_another_manifest(veri_twin, vehicleid_twin, tmp_path):
    """Features illustrated with a manifest they were not extracted from are refused by their recorded hash, naming
    the cause (not a confusing missing-image error later)."""
    vehicleid_features, _ = vehicleid_twin
    _, veri_manifest = veri_twin
    for figure in (tsne_figure, retrieval_figure):
        with pytest.raises(AgnetError, match=r"stale features: they were extracted from another manifest"):
            figure(vehicleid_features, veri_manifest, tmp_path / "x")


@pytest.mark.parametrize("twin", ["veri_twin", "vehicleid_twin"])
def test_retrieval_figure(twin, tmp_path, request):
    features, manifest = request.getfixturevalue(twin)
    stem = tmp_path / "fig8"
    assert_figure_files(retrieval_figure(features, manifest, stem, n_queries=3, top_k=5, title_note=NOTE), stem)


# ------------------------------------------------------------------------------------------- training curves


def tiny_log(path: Path, epochs: int, offset: float, columns=figures.LOSS_TERMS) -> Path:
    epoch = np.arange(1, epochs + 1)
    frame = pd.DataFrame({"epoch": epoch, "lr": 0.05})
    for k, term in enumerate(columns):
        frame[f"loss_{term}"] = (3.0 + k + offset) / epoch
    frame.to_csv(path, index=False)
    return path


def test_training_curves(tmp_path):
    logs = {
        "only_id": [tiny_log(tmp_path / "a0.csv", 4, 0.0), tiny_log(tmp_path / "a1.csv", 4, 0.2)],
        "agnet_asl": [tiny_log(tmp_path / "b0.csv", 3, 0.1), tiny_log(tmp_path / "b1.csv", 4, 0.3)],
        "my_variant": [tiny_log(tmp_path / "c0.csv", 4, 0.5, columns=("total", "category"))],
    }
    out = tmp_path / "out"
    stem = out / "training"
    assert_figure_files(training_curves(logs, stem, title_note=NOTE), stem)


def test_training_curves_errors(tmp_path):
    with pytest.raises(AgnetError):
        training_curves({}, tmp_path / "x")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(AgnetError, match="epoch"):
        training_curves({"agnet_ce": [tmp_path / "bad.csv"]}, tmp_path / "x")
